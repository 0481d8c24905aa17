"""Append throughput of the flywheel store: node-call rows per second, in batches, into a DuckDB
file on disk (experiments/store.py ``Store.append_traces``).

Each batch is what a recording process hands the store: ``runner.Trace`` objects of a
two-node pipeline (a classifier, then a writer), each node call with its inputs, outputs, a
demo, latency and tokens, and a rule verdict per node; Japanese and English text. The clock
covers the whole append (turning the objects into Arrow columns, the JSON encoding, the
``INSERT ... SELECT`` and the commit), not the building of the traces (whose garbage is collected
before each batch, so a collection of it does not land in the clock). The target (issue 9) is
>= 50,000 node-call rows/s; the median of the batches at each size is reported, with the overall rate
with and without the closing of the store (whose checkpoint writes what the WAL still holds).

Run: ``pipec bench store`` or ``python -m benchmarks.store``.
"""

from __future__ import annotations

import gc
import os
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from benchmarks.harness import markdown_table

__all__ = ["TARGET_ROWS_PER_SECOND", "run", "synthetic_traces"]

TARGET_ROWS_PER_SECOND = 50_000
BATCH_SIZES = (1_000, 10_000, 50_000)  # node-call rows per append
ROWS_PER_SIZE = 100_000  # rows appended at each batch size (at least 5 batches)
CALLS_PER_TRACE = 2

_MESSAGES = ("荷物がまだ届きません。追跡番号は JP123456789 です。",
             "I was charged twice for my order #4411, please refund one.",
             "パスワードを忘れてログインできません。", "The app crashes when I open the invoice page.")


def synthetic_traces(n_traces: int, *, start: int = 0, calls_per_trace: int = CALLS_PER_TRACE,
                     prefix: str = "bench") -> tuple[list[Any], dict[str, dict[str, Any]]]:
    """``n_traces`` traces of a classifier -> writer pipeline, and a rule verdict per node call.

    Returns:
        ``(traces, {trace_id: {node: Verdict}})`` for ``Store.append_traces``.
    """
    import dspy

    from experiments.runner import Trace
    from metrics.verdict import Verdict
    from programs.trace import NodeCall

    epoch = datetime(2026, 1, 1, tzinfo=UTC)
    traces, verdicts = [], {}
    for i in range(start, start + n_traces):
        message = _MESSAGES[i % len(_MESSAGES)]
        category = ("shipping", "billing", "account", "technical")[i % 4]
        reply = f"ご連絡ありがとうございます。{category} チームが本日対応します。 Thank you, we are on it (#{i})."
        calls = []
        for position in range(calls_per_trace):
            writer = position % 2 == 1
            node, field = ("reply", "reply") if writer else ("classify", "category")
            inputs = {"message": message, "category": category} if writer else {"message": message}
            calls.append(NodeCall(
                node=node if position < 2 else f"{node}{position}", kind="writer" if writer else "classifier",
                position=position, inputs=inputs, outputs={field: reply if writer else category},
                output_field=field, seconds=0.012 + (i % 7) * 0.001, lm_calls=1, prompt_tokens=180 + i % 50,
                completion_tokens=12 + i % 9, error=None, lm_error=False,
                demos=[{"message": _MESSAGES[(i + 1) % len(_MESSAGES)], field: "billing"}]))
        trace_id = f"{prefix}-{i:09d}"
        traces.append(Trace(trace_id=trace_id, pipeline="triage", program_version="0123abcd",
                            inputs={"message": message}, prediction=dspy.Prediction(category=category, reply=reply),
                            calls=calls, error=None, error_kind=None, seconds=0.03,
                            started_at=epoch + timedelta(seconds=i)))
        verdicts[trace_id] = {c.node: Verdict(1.0 if i % 5 else 0.0, bool(i % 5), "" if i % 5 else "wrong label")
                              for c in calls}
    return traces, verdicts


def run(*, batch_sizes: tuple[int, ...] = BATCH_SIZES, rows_per_size: int = ROWS_PER_SIZE) -> dict[str, Any]:
    """Appends ``rows_per_size`` node-call rows at each batch size into a fresh store; rows/s per size."""
    from experiments.store import CHECKPOINT_THRESHOLD, Store

    sizes: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="pipec-bench-store-") as tmp:
        for size in batch_sizes:
            path = Path(tmp) / f"store-{size}.duckdb"
            per_batch = max(1, size // CALLS_PER_TRACE)
            n_batches = max(5, rows_per_size // size)
            rates, cpu_rates, seconds, written = [], [], 0.0, 0
            store = Store.open(path)
            try:
                for b in range(n_batches):
                    traces, verdicts = synthetic_traces(per_batch, start=b * per_batch)
                    gc.collect()  # the garbage of building the traces is not the append's: keep it off the clock
                    started, cpu_started = time.perf_counter(), time.process_time()
                    rows = store.append_traces(traces, verdicts, source="import")
                    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
                    rates.append(rows / elapsed)
                    cpu_rates.append(rows / cpu if cpu > 0 else float("inf"))
                    seconds += elapsed
                    written += rows
                stored = store.query("SELECT count(*) AS n FROM node_calls")[0]["n"]
            finally:
                started = time.perf_counter()
                store.close()  # checkpoints what the WAL still holds: work the batches left for later
                closing = time.perf_counter() - started
            if stored != written:
                raise RuntimeError(f"batch size {size}: {written} rows appended but {stored} stored")
            sizes[str(size)] = {
                "batches": n_batches, "rows": written, "seconds": seconds,
                "rows_per_second_median": statistics.median(rates), "rows_per_second_min": min(rates),
                "rows_per_second_overall": written / seconds, "close_seconds": closing,
                "rows_per_second_overall_with_close": written / (seconds + closing),
                "rows_per_cpu_second_median": statistics.median(cpu_rates),
                "file_mb": path.stat().st_size / 1e6,
            }
    best = max(v["rows_per_second_median"] for v in sizes.values())
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    table = markdown_table(
        ["batch (node-call rows)", "batches", "rows/s (median batch)", "rows/s (slowest batch)", "rows/s (overall)",
         "rows/s (overall, close included)", "rows per CPU-second (median)"],
        [[size, v["batches"], round(v["rows_per_second_median"]), round(v["rows_per_second_min"]),
          round(v["rows_per_second_overall"]), round(v["rows_per_second_overall_with_close"]),
          round(v["rows_per_cpu_second_median"])] for size, v in sizes.items()])
    table += (f"\n\nTarget: >= {TARGET_ROWS_PER_SECOND:,} node-call rows/s in batches; best median "
              f"{best:,.0f} rows/s ({'met' if best >= TARGET_ROWS_PER_SECOND else 'NOT met'}). Each row also "
              "carries its trace (1 per 2 calls) and a verdict, in the same transaction. The store checkpoints "
              f"when its WAL passes {CHECKPOINT_THRESHOLD}, in the commit that crossed it (a slow batch), and "
              "at close (the close-included column). Wall-clock rates depend "
              "on what else the machine runs"
              + (f" (load average {load[0]:.1f} on {os.cpu_count()} cores at the end)" if load else "")
              + "; rows per CPU-second (this process, all its threads) is the cost of an append on its own.")
    return {"batch_sizes": sizes, "target_rows_per_second": TARGET_ROWS_PER_SECOND,
            "best_rows_per_second": best, "target_met": best >= TARGET_ROWS_PER_SECOND,
            "best_rows_per_cpu_second": max(v["rows_per_cpu_second_median"] for v in sizes.values()),
            "load_average_at_end": [round(x, 2) for x in load] if load else None, "table": table}


if __name__ == "__main__":
    from benchmarks import main

    main("store")
