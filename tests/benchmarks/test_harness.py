"""The benchmark harness writes its result files with the figures, the date and the machine."""

import json

import dspy
import pytest

from benchmarks import run_benchmark
from benchmarks.harness import intent_answer, latency_lm, write_result
from programs import DatasetError


def test_write_result_writes_json_and_markdown(tmp_path):
    json_path, md_path = write_result("demo", {"ratio": 1.25}, "| a |\n|---|\n| 1 |", results_dir=tmp_path)
    document = json.loads(json_path.read_text(encoding="utf-8"))
    assert document["benchmark"] == "demo" and document["ratio"] == 1.25
    assert {"date", "command", "machine"} <= set(document)
    assert {"cpu", "cores", "versions"} <= set(document["machine"]) and "dspy" in document["machine"]["versions"]
    assert "| a |" in md_path.read_text(encoding="utf-8")


def test_the_scripted_lm_answers_a_classifier_node():
    from benchmarks.banking77 import IntentPipeline

    config, engine = latency_lm(0)
    with dspy.context(lm=config.lm, adapter=config.adapter):
        label = IntentPipeline()(text="My card still has not arrived").label
    assert label == intent_answer("My card still has not arrived") == "card_arrival"
    assert engine.calls == 1


def test_parallel_benchmark_reports_efficiency_per_thread_count(tmp_path):
    try:
        result = run_benchmark("parallel", results_dir=str(tmp_path), rounds=1, examples=8)
    except DatasetError:
        pytest.skip("Banking77 is not available on this machine")
    assert set(result["efficiency"]) == {"1", "4", "16"}
    written = json.loads((tmp_path / "parallel.json").read_text(encoding="utf-8"))
    assert set(written["efficiency"]) == {"1", "4", "16"} and written["threads"]["16"]["lm_calls"] == 8
    assert (tmp_path / "parallel.md").read_text(encoding="utf-8").count("|") > 10


def test_bench_command_names_the_benchmarks_on_a_typo():
    from click.testing import CliRunner

    from experiments.cli import cli

    result = CliRunner().invoke(cli, ["bench", "overhed"])
    assert result.exit_code == 2 and "overhead, parallel, cache, local-lm, quality" in result.output
