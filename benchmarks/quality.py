"""What each optimizer buys on Banking77 ``intents6`` with the embedded LM (SmolLM2-135M).

Zero-shot first, then every optimizer pipec offers (``optimizers.registry.OPTIMIZERS``), each
through ``pipec compile`` (``experiments.compile.compile_pipeline``) on the same trainset and a
valset carved from the train split, then evaluated once on the dev split, which no optimizer
ever sees. Every run lands in one MLflow experiment (``pipec-bench-quality``) in the usual
store, with ``dev.accuracy`` logged into each compile's run, so the UI compares them side by
side. Each optimizer gets a fresh DSPy cache: repeats inside its own run are cache hits, as for
a user compiling once, and no optimizer is served answers another one paid for.

The whole benchmark is sized to finish within an hour on two cores; the budget caps on the
optimizers that need them are in ``PARAMS`` and in the result file.

Run: ``pipec bench quality`` or ``python -m benchmarks.quality``.
"""

from __future__ import annotations

import importlib
import logging
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dspy

from benchmarks import banking77
from benchmarks.harness import fresh_dspy_cache, markdown_table, write_jsonl

__all__ = ["run"]

logger = logging.getLogger(__name__)

EXPERIMENT = "pipec-bench-quality"
VAL_PER_LABEL = 6  # 36 valset examples carved from train: enough to rank candidates, cheap to score
# Budget caps, as `pipec compile --param` would set them, sized so the whole benchmark fits in an
# hour on 2 shared cores (~0.5 s a call with a fixed prompt, ~2 s with per-call retrieved demos,
# ~15 s a long generation). Every other setting is pipec's default (`pipec optimizers`).
PARAMS: dict[str, list[str]] = {
    # MIPROv2 keeps auto=light. It describes the trainset in batches of view_data_batch_size
    # examples: 10 by default, ~60 long generations on 622 examples; 100 makes it 7.
    "mipro": ["view_data_batch_size=100"],
    # GEPA light would spend ~520 metric calls (4 x valset + 380) and ~80 reflections, each a
    # long generation; 120 metric calls (~15 reflections) replace auto=light.
    "gepa": ["max_metric_calls=120"],
    # knn's tuning budget (default 300): its prompts carry retrieved demos, so llama.cpp cannot
    # reuse a prompt prefix and each call costs ~4x a fixed-prompt one.
    "knn": ["max_lm_calls=150"],
}
KNN_WAIT_S = 60 * 60
KNN_POLL_S = 5 * 60


def _optimizers() -> list[str]:
    """The registered optimizers; waits (polling) for ``knn`` while it is being built."""
    import optimizers.registry as registry

    waited = 0
    while "knn" not in registry.OPTIMIZERS and waited < KNN_WAIT_S:
        logger.warning("optimizer 'knn' is not registered yet; checking again in %d s", KNN_POLL_S)
        time.sleep(KNN_POLL_S)
        waited += KNN_POLL_S
        registry = importlib.reload(registry)
    return list(registry.OPTIMIZERS)


def _defaults(names: list[str]) -> dict[str, dict[str, Any]]:
    """pipec's constructor defaults of each optimizer (``--param`` values in PARAMS override them)."""
    from optimizers.registry import OPTIMIZERS

    return {n: {k: str(v) for k, v in OPTIMIZERS[n].defaults.items()} for n in names if n in OPTIMIZERS}


def _split() -> tuple[list[dspy.Example], list[dspy.Example], list[dspy.Example]]:
    """(train, val, dev): the valset is the first ``VAL_PER_LABEL`` train examples of each label."""
    train_all, dev, labels = banking77.load_split()
    val, train, taken = [], [], dict.fromkeys(labels, 0)
    for example in train_all:
        if taken[example.label] < VAL_PER_LABEL:
            taken[example.label] += 1
            val.append(example)
        else:
            train.append(example)
    return train, val, dev


def _dev_accuracy(program: dspy.Module, dev: list[dspy.Example], config: Any) -> dict[str, Any]:
    from experiments.evaluate import evaluate_program
    from metrics.pipeline_metric import PipelineMetric

    with dspy.context(lm=config.lm, adapter=config.adapter):
        report = evaluate_program(program, dev, PipelineMetric(banking77.IntentPipeline()), threads=1, progress=False)
    correct = sum(r.prediction is not None and r.prediction.get("label") == dev[r.index].label for r in report.results)
    return {"accuracy": correct / len(dev), "lm_calls": report.usage.calls, "tokens": report.usage.tokens,
            "seconds": report.seconds, "errors": report.errors}


def _log_dev(run_id: str | None, dev: dict[str, Any]) -> None:
    """Adds the dev figures to a compile run (best-effort, like all tracking)."""
    if run_id is None:
        return
    try:
        from mlflow.entities import Metric
        from mlflow.tracking import MlflowClient

        stamp = int(time.time() * 1000)
        MlflowClient().log_batch(run_id, metrics=[Metric(f"dev.{k}", float(v), stamp, 0) for k, v in dev.items()])
    except Exception as exc:  # telemetry never breaks the benchmark
        logger.warning("logging dev figures to run %s failed: %s", run_id, exc)


def _zero_shot(dev: list[dspy.Example], session: str) -> dict[str, Any]:
    from experiments.lm import make_lm
    from experiments.tracking import RunTracker

    config = make_lm("local", cache=False)
    start = time.perf_counter()
    figures = _dev_accuracy(banking77.IntentPipeline(), dev, config)
    tracker = RunTracker(EXPERIMENT, run_name="intents6-zero-shot",
                         tags={"pipec.kind": "evaluate", "pipec.bench": "quality", "pipec.bench.session": session})
    with tracker.start():
        tracker.params({"pipeline": "benchmarks.banking77:IntentPipeline", "optimizer": "none (zero-shot)",
                        "lm": config.settings, "dev.size": len(dev)})
        tracker.metrics({f"dev.{k}": v for k, v in figures.items()})
    return {"optimizer": "zero-shot", "dev_accuracy": figures["accuracy"], "compile_lm_calls": 0,
            "compile_tokens": 0, "wall_s": time.perf_counter() - start, "dev": figures, "run_id": tracker.run_id}


def _compile_and_score(name: str, files: dict[str, Path], dev: list[dspy.Example], session: str,
                       tmp: Path) -> dict[str, Any]:
    from experiments.compile import CompileOptions, compile_pipeline
    from experiments.lm import make_lm

    params = PARAMS.get(name, [])
    with fresh_dspy_cache(tmp / f"dspy-cache-{name}"):
        config = make_lm("local", cache=True)
        opts = CompileOptions(f"{Path(banking77.__file__).resolve()}:IntentPipeline", name,
                              trainset=str(files["train"]), valset=str(files["val"]), params=params, lm=config,
                              seed=0, out=str(tmp / f"{name}.json"), threads=1, experiment=EXPERIMENT,
                              progress=False, cache=True,
                              extra_tags={"pipec.bench": "quality", "pipec.bench.session": session})
        start = time.perf_counter()
        result = compile_pipeline(opts, say=lambda _: None)
        wall = time.perf_counter() - start
        program = banking77.IntentPipeline()
        program.load(result["program_path"])
        dev_figures = _dev_accuracy(program, dev, config)
    _log_dev(result["run_id"], dev_figures)
    return {"optimizer": name, "dev_accuracy": dev_figures["accuracy"],
            "compile_lm_calls": result["compile"]["lm_calls"], "compile_tokens": result["compile"]["tokens"],
            "wall_s": wall, "params": params, "val_score_baseline": result["baseline"]["score"],
            "val_score_compiled": result["compiled"]["score"], "dev": dev_figures, "run_id": result["run_id"]}


def run() -> dict[str, Any]:
    """Zero-shot, then each registered optimizer, all scored on the dev split.

    Returns:
        ``rows`` (``optimizer``, ``dev_accuracy``, ``compile_lm_calls``, ``compile_tokens``,
        ``wall_s`` and details), the settings, and ``table`` (Markdown).
    """
    from experiments.tracking import tracking_uri

    names = _optimizers()
    train, val, dev = _split()
    session = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    started = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory(prefix="pipec-bench-quality-") as tmp:
        files = {"train": write_jsonl(Path(tmp) / "train.jsonl", train),
                 "val": write_jsonl(Path(tmp) / "val.jsonl", val)}
        logger.info("quality: zero-shot on %d dev examples", len(dev))
        with fresh_dspy_cache(None):
            rows.append(_zero_shot(dev, session))
        for index, name in enumerate(names, start=1):
            logger.info("quality: %s (%d/%d) after %.0f s", name, index, len(names), time.perf_counter() - started)
            rows.append(_compile_and_score(name, files, dev, session, Path(tmp)))
            logger.info("quality: %s done in %.0f s, dev accuracy %.3f", name, rows[-1]["wall_s"],
                        rows[-1]["dev_accuracy"])
    table = markdown_table(
        ["optimizer", "dev accuracy", "compile LM calls", "compile tokens", "wall s (pipec compile)"],
        [[r["optimizer"], r["dev_accuracy"], r["compile_lm_calls"], r["compile_tokens"], r["wall_s"]] for r in rows])
    return {
        "rows": rows,
        "total_s": time.perf_counter() - started,
        "settings": {
            "dataset": "Banking77 intents6 (benchmarks.banking77.load_split, seed 0)",
            "train": len(train), "val": len(val), "dev": len(dev),
            "val_source": f"the first {VAL_PER_LABEL} train examples of each label (the split is already shuffled)",
            "lm": "local (SmolLM2-135M-Instruct, llama.cpp, JSON-schema constrained decoding), temperature 0",
            "threads": 1, "seed": 0, "optimizer_params": {n: PARAMS.get(n, []) for n in names},
            # Every registered optimizer runs, each within a stated budget: its --param caps above,
            # else pipec's defaults (the textual optimizers' max_lm_calls among them).
            "optimizer_defaults": _defaults(names),
            "defaults": "pipec's (`pipec optimizers`) for everything not in optimizer_params",
            "dspy_cache": "a fresh disk cache per optimizer (zero-shot: none)",
            "mlflow": {"experiment": EXPERIMENT, "tracking_uri": tracking_uri(), "session_tag": session},
            "wall_s": "the whole `pipec compile` run: baseline and compiled valset evaluations, the optimizer, "
                      "tracking; the dev evaluation is in rows[].dev.seconds",
        },
        "note": "Accuracy is the fraction of the 120 dev examples labelled right; the dev split is never used for "
                "tuning. Times are wall times on a machine whose 2 cores are shared with other workloads.",
        "table": table,
    }


if __name__ == "__main__":
    from benchmarks import main

    main("quality")
