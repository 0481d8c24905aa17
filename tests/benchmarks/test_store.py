"""The store benchmark, at a toy size: it writes its result files, and every row it appended is stored."""

import json

from benchmarks import BENCHMARKS, run_benchmark
from benchmarks.store import synthetic_traces


def test_the_store_benchmark_writes_rows_per_second_per_batch_size(tmp_path):
    assert BENCHMARKS["store"] == "benchmarks.store"
    result = run_benchmark("store", results_dir=tmp_path, batch_sizes=(10, 100), rows_per_size=200)
    assert set(result["batch_sizes"]) == {"10", "100"}
    for size, figures in result["batch_sizes"].items():
        assert figures["rows"] == figures["batches"] * int(size)
        assert figures["rows_per_second_median"] > 0 and figures["rows_per_cpu_second_median"] > 0
        assert figures["close_seconds"] > 0
        assert figures["rows_per_second_overall_with_close"] < figures["rows_per_second_overall"]
    document = json.loads((tmp_path / "store.json").read_text(encoding="utf-8"))
    assert document["target_rows_per_second"] == 50_000 and "machine" in document
    assert "rows/s (median batch)" in (tmp_path / "store.md").read_text(encoding="utf-8")


def test_synthetic_traces_are_real_traces_with_a_verdict_per_call():
    traces, verdicts = synthetic_traces(3, start=7)
    assert [t.trace_id for t in traces] == ["bench-000000007", "bench-000000008", "bench-000000009"]
    assert [c.node for c in traces[0].calls] == ["classify", "reply"] and traces[0].outputs["reply"]
    assert set(verdicts["bench-000000008"]) == {"classify", "reply"}
