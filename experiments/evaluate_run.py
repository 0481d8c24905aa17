"""The evaluate run: a pipeline or a compiled program over a devset, judged per node, tracked in
MLflow like a compile (tag ``pipec.kind=evaluate``).

The target is a pipeline (a built-in name or ``path/to/file.py:ClassName``) or a compiled
program (a DSPy JSON file saved by ``pipec compile``, which records its pipeline; ``--pipeline``
names it for other files). As with compiles, everything the user can get wrong is checked
before an MLflow run exists.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dspy

from experiments.datasets import Dataset, load_dataset
from experiments.lm import LMConfig, make_lm, raise_config_errors
from experiments.preflight import lms_in, preflight
from experiments.program_meta import read_program_meta
from experiments.repeats import repeat_lm, resampling
from experiments.stage import pipeline_params, run_stage
from experiments.tracking import DEFAULT_EXPERIMENT, RunTracker, start_writer, tracking_uri
from metrics.pipeline_metric import PipelineMetric
from programs.builtin import BUILTINS, builtin_dataset
from programs.errors import ConfigError, DatasetError, PipelineError
from programs.loader import make_pipeline
from programs.pipeline import Pipeline

__all__ = ["EvaluateOptions", "evaluate_pipeline", "evaluation_table"]

logger = logging.getLogger(__name__)


@dataclass
class EvaluateOptions:
    """What ``pipec evaluate`` was asked to do."""

    target: str
    devset: str | None = None
    pipeline: str | None = None
    lm: str | LMConfig | None = None
    judge_lm: str | LMConfig | None = None
    api_base: str | None = None
    threads: int | None = None
    experiment: str = DEFAULT_EXPERIMENT
    progress: bool = True
    cache: bool = True
    extra_tags: dict[str, str] = field(default_factory=dict)
    repeats: int = 1  # evaluate this many times, cache bypassed (see experiments.repeats)
    temperature: float | None = None  # the task LM's sampling temperature; None: its default
    preflight: bool = True  # every remote LM answers one tiny request before the run (experiments.preflight)


@dataclass
class _Plan:
    """An evaluation whose inputs have all been checked."""

    spec: str
    program_path: Path | None
    pipeline: Pipeline
    devset: Dataset
    lm: LMConfig
    judge: LMConfig | None
    metric: PipelineMetric
    threads: int


def _is_program(target: str) -> bool:
    return ":" not in target and target.lower().endswith(".json")


def _load(opts: EvaluateOptions) -> tuple[str, Path | None, Pipeline]:
    """The pipeline spec, the program file (if any), and the pipeline with the program loaded."""
    if not _is_program(opts.target):
        if opts.pipeline:
            raise ConfigError("--pipeline applies to a saved program (a .json file), not to a pipeline")
        return opts.target, None, make_pipeline(opts.target)
    path = Path(opts.target)
    meta = read_program_meta(path)
    spec = opts.pipeline or (meta or {}).get("pipeline")
    if not spec:
        raise PipelineError(f"{path}: the program does not record its pipeline (it was not saved by pipec "
                            "compile); pass --pipeline NAME or --pipeline path/to/file.py:ClassName")
    pipeline = make_pipeline(spec)
    try:
        pipeline.load(str(path))
    except Exception as exc:  # DSPy raises KeyError/ValueError/... for a state of another shape
        raise PipelineError(f"{path}: the program does not fit pipeline {spec!r} "
                            f"({type(exc).__name__}: {exc}); pass the right --pipeline") from exc
    return spec, path, pipeline


def _plan(opts: EvaluateOptions) -> _Plan:
    spec, program_path, pipeline = _load(opts)
    devset_path = opts.devset
    if devset_path is None:
        if spec not in BUILTINS:
            raise DatasetError("--devset is required for a pipeline that is not built in")
        devset_path = str(builtin_dataset(spec))
    devset = load_dataset(devset_path, pipeline)
    if opts.repeats < 1:
        raise ConfigError(f"--repeats {opts.repeats}: expected 1 or more")
    if opts.temperature is not None and opts.temperature < 0:
        raise ConfigError(f"--temperature {opts.temperature}: expected 0 or more")
    cache = opts.cache and opts.repeats == 1  # repeats must ask the LM again, not its cache
    lm = opts.lm if isinstance(opts.lm, LMConfig) else make_lm(opts.lm, api_base=opts.api_base, cache=cache,
                                                               temperature=opts.temperature)
    judge = opts.judge_lm
    if isinstance(judge, str):
        judge = make_lm(judge, api_base=opts.api_base, cache=cache, flag="--judge-lm")
    metric = PipelineMetric(pipeline, judge_lm=judge)
    threads = opts.threads or (1 if lm.engine is not None else 8)
    return _Plan(spec, program_path, pipeline, devset, lm, judge, metric, threads)


def _params(opts: EvaluateOptions, plan: _Plan) -> dict[str, Any]:
    return {
        **pipeline_params(plan.spec, plan.pipeline, plan.lm.settings, plan.threads),
        "program": str(plan.program_path) if plan.program_path else "(uncompiled)",
        "judge_lm": plan.judge.settings if plan.judge is not None else "(the task LM)",
        "devset": {"path": plan.devset.path, "size": len(plan.devset), "sha256": plan.devset.digest},
        "repeats": opts.repeats,
    }


def evaluate_pipeline(opts: EvaluateOptions, say: Callable[[str], None] = logger.info) -> dict[str, Any]:
    """Evaluates ``opts.target`` over the devset and tracks the run.

    Args:
        opts: The evaluate request.
        say: Where progress lines go (the CLI prints them on stderr).

    Returns:
        The result: run id, the score, and per node its score, pass rate and judge failures
        (classifier nodes add per-label precision/recall/F1, macro-F1 and the confusion matrix).

    Raises:
        UserError: Bad target, program, devset, setting or rule, before any run is started.
    """
    start_writer()
    plan = _plan(opts)
    lms = lms_in(("--lm", plan.lm), ("--judge-lm", plan.judge))
    checked = preflight(lms, say=say) if opts.preflight else None
    name = Path(plan.program_path).stem if plan.program_path else plan.spec.split(":")[-1]
    tracker = RunTracker(opts.experiment, run_name=f"evaluate-{name}",
                         tags={"pipec.kind": "evaluate", **opts.extra_tags})
    started = time.perf_counter()
    say(f"Evaluating {plan.spec}{f' ({plan.program_path})' if plan.program_path else ''} on "
        f"{len(plan.devset)} examples of {plan.devset.path} with {plan.lm.settings['model']}.")
    with tracker.start(), dspy.context(lm=plan.lm.lm, adapter=plan.lm.adapter), \
            raise_config_errors(*(lm for _, lm in lms)):
        tracker.params(_params(opts, plan))
        if checked is not None:
            tracker.metrics({"preflight.seconds": checked.seconds})
        examples = list(plan.devset.examples)
        task_lm = repeat_lm(plan.lm.lm, opts.temperature) if opts.repeats > 1 else None
        if task_lm is not None:
            how = resampling(task_lm, judge_cached=_judge_cached(plan.judge))
            tracker.params({"resampling": how})
            say(f"Repeats: {opts.repeats} ({how['note']}).")
        stage = run_stage(tracker, "evaluate", plan.pipeline, plan.pipeline, examples, plan.metric,
                          threads=plan.threads, progress=opts.progress, repeats=opts.repeats, repeat_lm=task_lm,
                          pipeline_name=plan.spec)
        summary, nodes, repeats = stage.summary(), stage.nodes, stage.repeats
        if repeats is not None:
            repeats["resampling"] = how
        if plan.program_path is not None:
            tracker.file(plan.program_path, "program")
    return {
        "run_id": tracker.run_id,
        "experiment_id": tracker.experiment_id,
        "tracking_uri": tracking_uri(),
        "pipeline": plan.spec,
        "program": str(plan.program_path) if plan.program_path else None,
        "lm": plan.lm.settings["model"],
        "judge_lm": plan.judge.settings["model"] if plan.judge is not None else None,
        "devset": {"path": plan.devset.path, "size": len(plan.devset)},
        "score": summary["score"],
        "nodes": nodes,
        "examples": summary["examples"],
        "errors": summary["errors"],
        "judge_failures": summary["judge_failures"],
        "lm_calls": summary["lm_calls"],
        "tokens": summary["tokens"],
        "seconds": time.perf_counter() - started,
        **({"repeats": repeats} if repeats is not None else {}),
    }


def _judge_cached(judge: LMConfig | None) -> bool | None:
    """Whether a separate judge LM answers from DSPy's cache (None: the task LM judges)."""
    return None if judge is None else bool(getattr(judge.lm, "cache", False))


def evaluation_table(result: dict[str, Any]) -> list[Any]:
    """Rich renderables for the terminal: a table of nodes, one of labels per classifier."""
    from rich.table import Table

    title = f"{result['pipeline']} · {result['lm']} · {result['examples']} examples"
    table = Table(title=title)
    for column in ("node", "kind", "score", "passed", "judge failures"):
        table.add_column(column, justify="left" if column in ("node", "kind") else "right")
    table.add_row("pipeline", "", f"{result['score']:.3f}", "", str(result["judge_failures"]))
    for name, node in result["nodes"].items():
        table.add_row(name, node["kind"], f"{node['score']:.3f}", f"{node['pass_rate']:.0%}",
                      str(node["judge_failures"]))
    renderables: list[Any] = [table]
    for name, node in result["nodes"].items():
        if "labels" not in node:
            continue
        labels = Table(title=f"{name}: macro-F1 {node['macro_f1']:.3f}, accuracy {node['accuracy']:.3f}")
        for column in ("label", "precision", "recall", "F1", "support"):
            labels.add_column(column, justify="left" if column == "label" else "right")
        for label, scores in node["labels"].items():
            labels.add_row(label, f"{scores['precision']:.3f}", f"{scores['recall']:.3f}", f"{scores['f1']:.3f}",
                           str(scores["support"]))
        renderables.append(labels)
    return renderables
