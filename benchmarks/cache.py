"""What DSPy's response cache saves on a recompile: the same ``pipec compile`` run twice with the
same inputs, seed and settings, on a fresh on-disk DSPy cache in a temporary folder.

The first (cold) compile fills the cache; the second (warm) one should be answered from it
entirely, making no LM call. The in-memory tier is cleared between the two, so the warm
compile reads the disk cache as a new process would. The LM is scripted with a fixed 20 ms
latency per call, so a call that misses the cache shows in the wall time too.

Run: ``pipec bench cache`` or ``python -m benchmarks.cache``.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import banking77
from benchmarks.harness import RATIO_NOTE, latency_lm, markdown_table, tracking_store, write_jsonl
from benchmarks.overhead import OPTIMIZER

__all__ = ["run"]

EXPERIMENT = "pipec-bench-cache"
LATENCY_MS = 20.0
N_TRAIN = 40
N_VAL = 40
THREADS = 4
# Each optimizer's settings, small enough for a scripted LM in a few seconds.
COMPILES = {
    "bootstrap-rs": [f"{k}={v}" for k, v in OPTIMIZER.items()],
    "mipro": ["num_candidates=3", "num_trials=4", "minibatch_size=10"],
    "gepa": ["max_metric_calls=200", "reflection_minibatch_size=3"],
}


def _compile(optimizer: str, params: list[str], paths: dict[str, Any], tmp: Path) -> dict[str, Any]:
    from experiments.compile import CompileOptions, compile_pipeline

    config, engine = latency_lm(LATENCY_MS, cache=True)
    opts = CompileOptions(paths["pipeline"], optimizer, trainset=str(paths["train"]), valset=str(paths["val"]),
                          params=params, lm=config, seed=0, out=str(tmp / f"{optimizer}.json"), threads=THREADS,
                          experiment=EXPERIMENT, progress=False, cache=True)
    start = time.perf_counter()
    result = compile_pipeline(opts, say=lambda _: None)
    seconds = time.perf_counter() - start
    counted = result["baseline"]["lm_calls"] + result["compile"]["lm_calls"] + result["compiled"]["lm_calls"]
    return {"seconds": seconds, "lm_calls": engine.calls, "lm_calls_counted": counted,
            "compiled_score": result["compiled"]["score"]}


def run() -> dict[str, Any]:
    """Compiles cold then warm, per optimizer, each pair on a fresh disk cache.

    Returns:
        ``cold_lm_calls``, ``warm_lm_calls``, ``warm_over_cold_wall`` (bootstrap-rs), the same per
        optimizer, and ``table`` (Markdown).
    """
    import dspy

    train_all, _, _ = banking77.load_split()
    train, val = train_all[:N_TRAIN], train_all[N_TRAIN:N_TRAIN + N_VAL]
    rows, per_optimizer = [], {}
    previous = vars(dspy).get("cache")  # not dspy.cache: reading it builds the default cache
    with (tempfile.TemporaryDirectory(prefix="pipec-bench-") as tmp,
          tracking_store(Path(tmp) / "mlflow.db", [EXPERIMENT])):
        base = Path(tmp)
        paths = {"pipeline": f"{Path(banking77.__file__).resolve()}:IntentPipeline",
                 "train": write_jsonl(base / "train.jsonl", train), "val": write_jsonl(base / "val.jsonl", val)}
        try:
            # One untimed compile first: the store's creation and first-use imports belong to no contender.
            dspy.configure_cache(enable_disk_cache=False, enable_memory_cache=False)
            _compile("bootstrap-rs", COMPILES["bootstrap-rs"], paths, base)
            for optimizer, params in COMPILES.items():
                dspy.configure_cache(enable_disk_cache=True, enable_memory_cache=True,
                                     disk_cache_dir=os.fspath(base / f"dspy-cache-{optimizer}"))
                cold = _compile(optimizer, params, paths, base)
                dspy.cache.reset_memory_cache()  # the warm compile reads the disk, as a new process would
                warm = _compile(optimizer, params, paths, base)
                per_optimizer[optimizer] = {"settings": params, "cold": cold, "warm": warm,
                                            "warm_over_cold_wall": warm["seconds"] / cold["seconds"]}
                rows.append([optimizer, cold["lm_calls"], warm["lm_calls"], cold["seconds"], warm["seconds"],
                             warm["seconds"] / cold["seconds"]])
        finally:
            if previous is None:
                vars(dspy).pop("cache", None)
            else:
                dspy.cache = previous
    headline = per_optimizer["bootstrap-rs"]
    table = markdown_table(["optimizer", "cold LM calls", "warm LM calls", "cold s", "warm s", "warm/cold wall"],
                           rows)
    return {
        "cold_lm_calls": headline["cold"]["lm_calls"],
        "warm_lm_calls": headline["warm"]["lm_calls"],
        "warm_over_cold_wall": headline["warm_over_cold_wall"],
        "optimizers": per_optimizer,
        "settings": {"latency_ms": LATENCY_MS, "train": N_TRAIN, "val": N_VAL, "threads": THREADS, "seed": 0,
                     "cache": "DSPy disk + memory cache in a fresh temporary folder; memory cleared between the "
                              "cold and the warm compile", "tracking": "MLflow into a temporary sqlite store"},
        "note": RATIO_NOTE,
        "table": table,
    }


if __name__ == "__main__":
    from benchmarks import main

    main("cache")
