"""What recording costs a call, and how fast a live demo pool retrieves from the store.

1. Overhead per call: the built-in triage pipeline (two nodes) on a scripted LM that answers at
   once (0 ms: pure framework cost), called bare, through ``experiments.recording.Recorder``
   (run_traced, inline rule checks, the queue to the background store writer), with three input
   guards too, and through the ``pipec run`` path (the recorder plus each call's JSON output
   line). One call of each in turn (ABBA), after a warm-up; the figure is the difference of the
   per-call medians, in milliseconds.
2. Retrieval from the store: a store holding 100,000 corrected node calls (Banking77 messages,
   and pairs of them); a ``LivePool`` over it (``hash`` embedding, k=8) is built once (every row
   embedded, the vectors stored in the store's embeddings table), then built again as the next
   process would (the vectors read back, none embedded); then, over that pool, for
   each query new corrections are saved first (one of them a near-duplicate of the query), and
   the timed selection takes them in: the cursor check, reading and embedding only the new rows,
   the recency-weighted search over the whole matrix. ``fresh_hits`` counts the queries whose
   demos include the row saved just before.

Run: ``pipec bench recording`` or ``python -m benchmarks.recording``.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import random
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dspy

from benchmarks.harness import RATIO_NOTE, alternate, fresh_dspy_cache, latency_lm, markdown_table, median

__all__ = ["run"]

logger = logging.getLogger("benchmarks")

TARGETS = {"overhead_ms": 1.0, "retrieval_p50_ms": 50.0}
MESSAGES = ("Where is my parcel? It was due on Monday.", "I was charged twice for one order.",
            "I cannot log in since the update.", "The app crashes when I open my invoices.",
            "Please refund the broken kettle.", "荷物がまだ届きません。確認してください。")


def _overhead(calls: int, history: bool) -> dict[str, Any]:
    """Per-call cost of each contender; DSPy's module history on (its default) or off."""
    from experiments.recording import Recorder, run_rows, trace_record
    from metrics.guards import NoPII, NoPromptInjection, NotEmpty
    from programs.builtin import Triage

    lm, engine = latency_lm(0.0)
    bare, recorded, guarded, piped = Triage(), Triage(), Triage(), Triage()
    sink = io.StringIO()
    counter = iter(range(10**9))

    def message() -> str:
        return MESSAGES[next(counter) % len(MESSAGES)]

    def cpu(fn: Any) -> Any:
        def timed() -> float:  # the caller's own CPU time: what other processes' load does not inflate
            start = time.thread_time()
            fn()
            return time.thread_time() - start
        return timed

    with tempfile.TemporaryDirectory(prefix="pipec-bench-recording-") as tmp, fresh_dspy_cache(None), \
            dspy.context(lm=lm.lm, adapter=lm.adapter, disable_history=not history), \
            Recorder(recorded, store=Path(tmp) / "a.duckdb", pipeline="triage") as rec, \
            Recorder(guarded, store=Path(tmp) / "b.duckdb", pipeline="triage",
                     guards=[NotEmpty(), NoPII(), NoPromptInjection()]) as rec_guarded, \
            Recorder(piped, store=Path(tmp) / "c.duckdb", pipeline="triage") as rec_piped:

        def pipec_run() -> None:
            for trace in run_rows(rec_piped, [{"message": message()}]):
                sink.write(json.dumps(trace_record(trace, detail=False), ensure_ascii=False) + "\n")

        timings = alternate({
            "bare program": cpu(lambda: bare(message=message())),
            "Recorder": cpu(lambda: rec.run(message=message())),
            "Recorder + 3 guards": cpu(lambda: rec_guarded.run(message=message())),
            "pipec run path": cpu(pipec_run),
        }, rounds=calls)
        written = {"Recorder": rec, "Recorder + 3 guards": rec_guarded, "pipec run path": rec_piped}
    wall = {name: [s * 1000 for s, _ in runs] for name, runs in timings.items()}
    cpu_ms = {name: [c * 1000 for _, c in runs] for name, runs in timings.items()}
    rows = []
    for name in timings:
        stats = written[name].stats if name in written else None
        rows.append({"contender": name, "calls": len(wall[name]), "median_ms": round(median(wall[name]), 4),
                     "p95_ms": round(sorted(wall[name])[int(0.95 * (len(wall[name]) - 1))], 4),
                     "added_median_ms": round(median(wall[name]) - median(wall["bare program"]), 4),
                     "cpu_median_ms": round(median(cpu_ms[name]), 4),
                     "added_cpu_median_ms": round(median(cpu_ms[name]) - median(cpu_ms["bare program"]), 4),
                     "traces_written": stats.traces_written if stats else None,
                     "traces_lost": stats.traces_lost if stats else None})
    return {"dspy_module_history": history, "calls_per_contender": calls, "lm_latency_ms": 0.0,
            "lm_calls": engine.calls, "contenders": rows}


def _texts(n: int, rng: random.Random) -> list[tuple[str, str]]:
    """``n`` (message, intent) pairs: Banking77 rows, then random pairs of them (first one's intent)."""
    from benchmarks.banking77 import dataset_dir

    with (dataset_dir() / "train.csv").open(encoding="utf-8", newline="") as handle:
        rows = [(row["text"], row["category"]) for row in csv.DictReader(handle)]
    if n <= len(rows):
        return rng.sample(rows, n)
    extra = [rng.choice(rows) for _ in range(n - len(rows))]
    return rows + [(f"{text} {rng.choice(rows)[0]}", label) for text, label in extra]


def _fill_store(store: Any, pairs: list[tuple[str, str]], start: datetime) -> list[str]:
    """One trace with one classify call per pair; returns the traces' ids."""
    from experiments.runner import Trace
    from programs.trace import NodeCall

    ids = []
    batch: list[Any] = []
    for i, (text, _) in enumerate(pairs):
        trace_id = uuid.uuid4().hex
        ids.append(trace_id)
        call = NodeCall(node="classify", kind="classifier", position=0, inputs={"text": text},
                        outputs={"label": "card_arrival"}, output_field="label")
        batch.append(Trace(trace_id, "bench", "v1", {"text": text}, None, [call],
                           started_at=start + timedelta(seconds=i)))
        if len(batch) == 10_000:
            store.append_traces(batch, source="import")
            batch = []
    if batch:
        store.append_traces(batch, source="import")
    return ids


def _retrieval(size: int, queries: int, added_per_query: int) -> dict[str, Any]:
    from experiments.recording import StoreDemoSource
    from experiments.store import Store
    from programs.demo_pool import LivePool

    rng = random.Random(0)
    pairs = _texts(size + queries * added_per_query, rng)
    old, fresh = pairs[:size], pairs[size:]
    start = datetime.now(UTC) - timedelta(days=90)
    with tempfile.TemporaryDirectory(prefix="pipec-bench-retrieval-") as tmp, \
            Store.open(Path(tmp) / "s.duckdb") as store:
        t0 = time.perf_counter()
        ids = _fill_store(store, pairs, start)
        fill_seconds = time.perf_counter() - t0
        # The first `size` calls corrected in bulk (one statement), backdated over 90 days.
        _bulk_gold(store, ids[:size], old)
        store.query("INSERT INTO corrections SELECT 'k' || c.call_id, c.trace_id, c.call_id, c.node, 'bench', "
                    "json_object('label', g.label), NULL, c.created_at FROM node_calls c JOIN gold g USING (trace_id)")
        cold = LivePool(StoreDemoSource(store, "bench", "classify"), ("text",), embedding="hash", k=8)
        t0, c0 = time.perf_counter(), time.process_time()
        cold.refresh()  # every row embedded, and the vectors stored
        build_seconds, build_cpu = time.perf_counter() - t0, time.process_time() - c0
        del cold
        # The next process's pool: the same rows, their vectors read back from the store.
        pool = LivePool(StoreDemoSource(store, "bench", "classify"), ("text",), embedding="hash", k=8)
        t0, c0 = time.perf_counter(), time.process_time()
        pool.refresh()
        cached_seconds, cached_cpu = time.perf_counter() - t0, time.process_time() - c0
        reused = pool.reused
        probe = random.Random(1)
        samples, hits, cursor_only, cpu = [], 0, [], []
        for q in range(queries):
            new = list(range(size + q * added_per_query, size + (q + 1) * added_per_query))
            for j in new:  # saved now: each one is a row added since the index was built
                store.add_correction(ids[j], {"label": pairs[j][1]}, node="classify", reviewer="bench")
            query = pairs[new[-1]][0] + " please"  # a near-duplicate of the newest correction
            t0, c0 = time.perf_counter(), time.thread_time()
            demos = pool.select({"text": query})
            samples.append(time.perf_counter() - t0)
            cpu.append(time.thread_time() - c0)
            hits += any(d["text"] == pairs[new[-1]][0] for d in demos)
            t0 = time.perf_counter()
            pool.select({"text": old[probe.randrange(size)][0]})  # nothing new: the cursor check only
            cursor_only.append(time.perf_counter() - t0)
        rows = len(pool)
    ms = sorted(s * 1000 for s in samples)
    quiet = sorted(s * 1000 for s in cursor_only)
    return {"pool_rows_at_end": rows, "initial_rows": size, "added_rows": len(fresh), "queries": queries,
            "added_per_query": added_per_query, "k": 8, "embedding": "hash", "half_life_days": pool.half_life_days,
            "store_fill_seconds": round(fill_seconds, 2), "index_build_seconds": round(build_seconds, 2),
            "index_build_cpu_seconds": round(build_cpu, 2), "index_build_cached_seconds": round(cached_seconds, 2),
            "index_build_cached_cpu_seconds": round(cached_cpu, 2), "vectors_read_from_store": reused,
            "embedded_rows": pool.embedded, "select_with_new_rows_ms": {
                "p50": round(statistics.median(ms), 3), "p95": round(ms[int(0.95 * (len(ms) - 1))], 3)},
            "select_with_new_rows_cpu_ms": {"p50": round(statistics.median(cpu) * 1000, 3)},
            "select_nothing_new_ms": {"p50": round(statistics.median(quiet), 3),
                                      "p95": round(quiet[int(0.95 * (len(quiet) - 1))], 3)},
            "fresh_hits": hits}


def _load() -> str:
    import os

    return " / ".join(f"{x:.1f}" for x in os.getloadavg()) + f" (1/5/15 min) on {os.cpu_count()} cores"


def _bulk_gold(store: Any, ids: list[str], pairs: list[tuple[str, str]]) -> None:
    """The gold labels as a temporary table, loaded through a JSON file (one statement)."""
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False, encoding="utf-8") as handle:
        for trace_id, (_, label) in zip(ids, pairs, strict=True):
            handle.write(json.dumps({"trace_id": trace_id, "label": label}) + "\n")
    try:
        store.query(f"CREATE TEMP TABLE gold AS SELECT * FROM read_json('{handle.name}', format='newline_delimited', "
                    "columns={trace_id: 'VARCHAR', label: 'VARCHAR'})")
    finally:
        Path(handle.name).unlink()


def run(calls: int = 300, pool_size: int = 100_000, queries: int = 200, added_per_query: int = 5) -> dict[str, Any]:
    """Both measurements; the figures and a Markdown table."""
    overhead = []
    for history in (True, False):
        logger.info("recording overhead: %d calls per contender, DSPy module history %s", calls,
                    "on" if history else "off")
        overhead.append(_overhead(calls, history))
    logger.info("retrieval: %d corrected calls in the store, %d queries", pool_size, queries)
    retrieval = _retrieval(pool_size, queries, added_per_query)
    table = markdown_table(
        ["DSPy module history", "contender", "calls", "median ms/call", "p95 ms/call", "added ms/call (median)",
         "CPU ms/call (median)", "added CPU ms/call", "traces written"],
        [["on (default)" if o["dspy_module_history"] else "off", r["contender"], r["calls"], r["median_ms"],
          r["p95_ms"], r["added_median_ms"], r["cpu_median_ms"], r["added_cpu_median_ms"],
          "" if r["traces_written"] is None else r["traces_written"]] for o in overhead for r in o["contenders"]])
    sel, quiet = retrieval["select_with_new_rows_ms"], retrieval["select_nothing_new_ms"]
    table += "\n\n" + markdown_table(
        ["store rows", "new rows per query", "select p50 ms", "select p95 ms", "select CPU p50 ms",
         "nothing new p50 ms", "fresh row retrieved", "index build s (CPU s)", "next build, vectors stored s (CPU s)"],
        [[retrieval["initial_rows"], retrieval["added_per_query"], sel["p50"], sel["p95"],
          retrieval["select_with_new_rows_cpu_ms"]["p50"], quiet["p50"],
          f"{retrieval['fresh_hits']}/{retrieval['queries']}",
          f"{retrieval['index_build_seconds']} ({retrieval['index_build_cpu_seconds']})",
          f"{retrieval['index_build_cached_seconds']} ({retrieval['index_build_cached_cpu_seconds']}; "
          f"{retrieval['vectors_read_from_store']:,} vectors read)"]])
    table += (f"\n\nTargets: added ≤ {TARGETS['overhead_ms']} ms per call (median, scripted LM at 0 ms); top-8 ≤ "
              f"{TARGETS['retrieval_p50_ms']:.0f} ms p50 at 100,000 rows including rows added since the index was "
              "built. CPU ms is the calling thread's own CPU time, which the load of other processes does not "
              "inflate (DuckDB's own threads are not in it); build CPU s is the whole process's (all threads). "
              f"Load average when done: {_load()}. {RATIO_NOTE}")
    return {"overhead": overhead, "retrieval": retrieval, "targets": TARGETS, "table": table}


if __name__ == "__main__":
    from benchmarks import main

    main("recording")
