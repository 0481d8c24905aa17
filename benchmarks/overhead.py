"""What pipec adds to a compile: the same bootstrap-rs compile through plain DSPy and through
``pipec compile`` (full MLflow tracking into a temporary sqlite store), on a scripted LM with a
fixed latency per call.

Both contenders do the same work: evaluate the program on the valset, compile it, evaluate the
compiled program, save it. The plain one uses DSPy alone (``dspy.Predict`` with the same
signature, an exact-match metric, ``dspy.Evaluate``); pipec's goes through
``experiments.compile.compile_pipeline``. They alternate after a warm-up round, and the ratio of
their median wall times is reported, at 20 ms per call (a fast hosted model) and at 0 ms (pure
framework cost). A third contender runs pipec with its sqlite store in memory (``/dev/shm``):
what is left of the overhead without the disk's fsync on every store commit.

Run: ``pipec bench overhead`` or ``python -m benchmarks.overhead``.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import dspy

from benchmarks import banking77
from benchmarks.harness import (
    RATIO_NOTE,
    alternate,
    fresh_dspy_cache,
    latency_lm,
    markdown_table,
    median,
    tracking_store,
    write_jsonl,
)

__all__ = ["run"]

EXPERIMENT = "pipec-bench-overhead"
N_TRAIN = 40
N_VAL = 40
THREADS = 4
ROUNDS = 4
OPTIMIZER = {"max_bootstrapped_demos": 4, "max_labeled_demos": 4, "num_candidate_programs": 4}


class _IntentSignature(dspy.Signature):
    """Classify the bank customer's message into its intent."""

    text: str = dspy.InputField(desc="a bank customer's message")
    label: Literal[banking77.INTENTS6] = dspy.OutputField(desc="one of the labels")


class _PlainIntent(dspy.Module):
    """The intent pipeline as a DSPy user writes it without pipec (same prompt, same LM requests)."""

    def __init__(self) -> None:
        super().__init__()
        self.intent = dspy.Predict(_IntentSignature)

    def forward(self, text: str) -> dspy.Prediction:
        return dspy.Prediction(label=self.intent(text=text).label)


def _exact(example: dspy.Example, prediction: Any, trace: Any = None) -> float | bool:
    correct = prediction.label == example.label
    return correct if trace is not None else float(correct)


def _plain_compile(lm: Any, train: list, val: list, out: Path) -> None:
    """Evaluate, compile, evaluate, save with DSPy alone."""
    from dspy.teleprompt import BootstrapFewShotWithRandomSearch

    with dspy.context(lm=lm, adapter=dspy.JSONAdapter()):
        evaluate = dspy.Evaluate(devset=val, metric=_exact, num_threads=THREADS, display_progress=False)
        evaluate(_PlainIntent())
        optimizer = BootstrapFewShotWithRandomSearch(metric=_exact, num_threads=THREADS, **OPTIMIZER)
        compiled = optimizer.compile(_PlainIntent(), trainset=train, valset=val)
        evaluate(compiled)
        compiled.save(str(out))


def _pipec_compile(lm_config: Any, pipeline: str, train_path: Path, val_path: Path, out: Path) -> dict[str, Any]:
    """The same compile through ``pipec compile``; returns its result."""
    from experiments.compile import CompileOptions, compile_pipeline

    params = [f"{k}={v}" for k, v in OPTIMIZER.items()]
    opts = CompileOptions(pipeline, "bootstrap-rs", trainset=str(train_path), valset=str(val_path), params=params,
                          lm=lm_config, seed=0, out=str(out), threads=THREADS, experiment=EXPERIMENT,
                          progress=False, cache=False)
    return compile_pipeline(opts, say=lambda _: None)


@contextmanager
def _store(uri: str) -> Iterator[None]:
    previous = os.environ["MLFLOW_TRACKING_URI"]
    os.environ["MLFLOW_TRACKING_URI"] = uri
    try:
        yield
    finally:
        os.environ["MLFLOW_TRACKING_URI"] = previous


def _measure(latency_ms: float, tmp: Path, train: list, val: list, rounds: int,
             memory_store: str | None) -> dict[str, Any]:
    pipeline = f"{Path(banking77.__file__).resolve()}:IntentPipeline"
    train_path, val_path = write_jsonl(tmp / "train.jsonl", train), write_jsonl(tmp / "val.jsonl", val)
    lms = {name: latency_lm(latency_ms) for name in ("plain", "pipec", "pipec_memory_store")}
    calls: dict[str, list[int]] = {name: [] for name in lms}

    def counted(name: str, fn: Any) -> Any:
        def contender() -> None:
            engine = lms[name][1]
            before = engine.calls
            fn(lms[name][0])
            calls[name].append(engine.calls - before)

        return contender

    contenders = {
        "plain": counted("plain", lambda lm: _plain_compile(lm.lm, train, val, tmp / "plain.json")),
        "pipec": counted("pipec", lambda lm: _pipec_compile(lm, pipeline, train_path, val_path, tmp / "pipec.json")),
    }
    if memory_store is not None:
        def on_memory_store(lm: Any) -> None:
            with _store(memory_store):
                _pipec_compile(lm, pipeline, train_path, val_path, tmp / "pipec-m.json")

        contenders["pipec_memory_store"] = counted("pipec_memory_store", on_memory_store)
    timings = alternate(contenders, rounds)
    seconds = {name: median([t for t, _ in runs]) for name, runs in timings.items()}
    lm_calls = {name: int(median(calls[name][-rounds:])) for name in timings}
    figures = {
        "latency_ms": latency_ms,
        "plain_s": seconds["plain"],
        "pipec_s": seconds["pipec"],
        "ratio": seconds["pipec"] / seconds["plain"],
        "lm_calls": lm_calls,
        "added_ms_per_call": 1000.0 * (seconds["pipec"] - seconds["plain"]) / max(lm_calls["pipec"], 1),
        "runs_s": {name: [round(t, 4) for t, _ in runs] for name, runs in timings.items()},
    }
    if memory_store is not None:
        figures["pipec_memory_store_s"] = seconds["pipec_memory_store"]
        figures["ratio_memory_store"] = seconds["pipec_memory_store"] / seconds["plain"]
    return figures


def run(rounds: int = ROUNDS) -> dict[str, Any]:
    """Measures pipec's compile against plain DSPy at 20 ms and at 0 ms per LM call.

    A third contender, where ``/dev/shm`` exists, is pipec with its store in memory: the same
    work without the disk's fsync per commit, to show how much of the overhead is the store's.

    Returns:
        ``ratio_20ms``, ``ratio_0ms``, ``added_ms_per_call`` (at 20 ms) and the details,
        plus ``table`` (Markdown).
    """
    train_all, _, _ = banking77.load_split()
    train, val = train_all[:N_TRAIN], train_all[N_TRAIN:N_TRAIN + N_VAL]
    shm = Path("/dev/shm")
    with (tempfile.TemporaryDirectory(prefix="pipec-bench-") as tmp, fresh_dspy_cache(None),
          tracking_store(Path(tmp) / "mlflow.db", [EXPERIMENT]),
          tempfile.TemporaryDirectory(prefix="pipec-bench-", dir=shm if shm.is_dir() else None) as memory):
        memory_store = None
        if shm.is_dir():
            with tracking_store(Path(memory) / "mlflow.db", [EXPERIMENT]) as uri:
                memory_store = uri
        at20 = _measure(20.0, Path(tmp), train, val, rounds, memory_store)
        at0 = _measure(0.0, Path(tmp), train, val, rounds, memory_store)
    headers = ["LM latency", "LM calls", "plain DSPy s", "pipec s", "ratio pipec/plain", "added ms/call"]
    if memory_store is not None:
        headers.append("ratio, store in memory")
    rows = [[f"{m['latency_ms']:.0f} ms", m["lm_calls"]["pipec"], m["plain_s"], m["pipec_s"], m["ratio"],
             m["added_ms_per_call"], *([m["ratio_memory_store"]] if memory_store else [])] for m in (at20, at0)]
    return {
        "ratio_20ms": at20["ratio"],
        "ratio_0ms": at0["ratio"],
        "added_ms_per_call": at20["added_ms_per_call"],
        "added_ms_per_call_0ms": at0["added_ms_per_call"],
        "added_s_20ms": at20["pipec_s"] - at20["plain_s"],
        "settings": {"optimizer": "bootstrap-rs", **OPTIMIZER, "seed": 0, "threads": THREADS, "train": N_TRAIN,
                     "val": N_VAL, "rounds": rounds, "order": "warm-up round, then alternating (ABC, CBA); medians",
                     "dspy_cache": "off",
                     "tracking": "pipec: MLflow (parent run with params, metrics, artifacts; a child run per "
                                 "candidate) into a temporary sqlite store on disk, and on /dev/shm for the "
                                 "memory-store contender; plain: none"},
        "at_20ms": at20,
        "at_0ms": at0,
        "note": RATIO_NOTE,
        "table": markdown_table(headers, rows),
    }


if __name__ == "__main__":
    from benchmarks import main

    main("overhead")
