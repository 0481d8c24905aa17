"""How well pipec's evaluation uses threads: 200 examples through
``experiments.evaluate.evaluate_program`` on a scripted LM that takes 100 ms per call, at 1, 4
and 16 threads.

The ideal throughput at ``n`` threads is ``n / latency`` calls per second (every thread always
waiting on the LM); ``efficiency`` is the achieved throughput over that. What is lost is
pipec's and DSPy's own CPU time per call (adapter formatting and parsing, validators) under the
GIL, and the thread pool's start and drain.

Run: ``pipec bench parallel`` or ``python -m benchmarks.parallel``.
"""

from __future__ import annotations

from typing import Any

import dspy

from benchmarks import banking77
from benchmarks.harness import RATIO_NOTE, alternate, fresh_dspy_cache, latency_lm, markdown_table, median

__all__ = ["run"]

EXAMPLES = 200
LATENCY_MS = 100.0
THREADS = (1, 4, 16)
ROUNDS = 2


def run(rounds: int = ROUNDS, examples: int = EXAMPLES) -> dict[str, Any]:
    """Evaluates ``examples`` examples at each thread count, ``rounds`` times, alternating.

    Returns:
        ``efficiency`` keyed by thread count (as strings), the throughput details, and
        ``table`` (Markdown).
    """
    from experiments.evaluate import evaluate_program
    from metrics.pipeline_metric import PipelineMetric

    train, _, _ = banking77.load_split()
    data = train[:examples]
    pipeline = banking77.IntentPipeline()
    metric = PipelineMetric(pipeline)
    config, engine = latency_lm(LATENCY_MS)
    calls: dict[int, list[int]] = {n: [] for n in THREADS}

    def contender(threads: int) -> Any:
        def evaluate() -> None:
            before = engine.calls
            with dspy.context(lm=config.lm, adapter=config.adapter):
                evaluate_program(pipeline, data, metric, threads=threads, progress=False)
            calls[threads].append(engine.calls - before)

        return evaluate

    with fresh_dspy_cache(None):
        # The warm-up is a short run: it loads what the first evaluation imports, not 20 s of LM waits.
        with dspy.context(lm=config.lm, adapter=config.adapter):
            evaluate_program(pipeline, data[:8], metric, threads=4, progress=False)
        timings = alternate({str(n): contender(n) for n in THREADS}, rounds, warmup=False)
    rows, details, efficiency = [], {}, {}
    for n in THREADS:
        seconds = median([t for t, _ in timings[str(n)]])
        lm_calls = int(median(calls[n]))
        achieved = lm_calls / seconds
        ideal = n / (LATENCY_MS / 1000.0)
        efficiency[str(n)] = achieved / ideal
        details[str(n)] = {"seconds": seconds, "lm_calls": lm_calls, "calls_per_s": achieved,
                           "ideal_calls_per_s": ideal, "runs_s": [round(t, 4) for t, _ in timings[str(n)]]}
        rows.append([n, lm_calls, seconds, achieved, ideal, f"{100 * efficiency[str(n)]:.1f}%"])
    table = markdown_table(["threads", "LM calls", "wall s", "calls/s", "ideal calls/s", "efficiency"], rows)
    return {
        "efficiency": efficiency,
        "settings": {"examples": examples, "latency_ms": LATENCY_MS, "threads": list(THREADS), "rounds": rounds,
                     "pipeline": "benchmarks.banking77.IntentPipeline (one classifier node)",
                     "through": "experiments.evaluate.evaluate_program", "dspy_cache": "off",
                     "order": "thread counts alternate (1,4,16 then 16,4,1); medians"},
        "threads": details,
        "note": RATIO_NOTE,
        "table": table,
    }


if __name__ == "__main__":
    from benchmarks import main

    main("parallel")
