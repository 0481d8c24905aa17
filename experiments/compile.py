"""The compile run: load, baseline, optimize, evaluate, save, and record it all in MLflow.

Everything the user can get wrong (pipeline, datasets, optimizer, settings, LM spec) is checked
before an MLflow run exists, so bad input never leaves a run behind; once a run is started it
ends FINISHED, FAILED or KILLED.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dspy

from experiments.alignment import judge_alignment_metrics
from experiments.candidates import candidate_runs
from experiments.cost import log_cost, run_capped, takes_max_cost, track_cost
from experiments.datasets import Dataset, load_dataset, split_dataset
from experiments.evaluate import lm_usage
from experiments.lm import LMConfig, make_lm, raise_config_errors
from experiments.mlflow_native import log_datasets, log_program_model, log_traces, register_prompts
from experiments.preflight import lms_in, preflight
from experiments.program_meta import program_meta, stamp_program
from experiments.repeats import repeat_lm, resampling
from experiments.resume import recorded_options
from experiments.stage import Stage, pipeline_params, run_stage, versions
from experiments.tracking import DEFAULT_EXPERIMENT, RunTracker, start_writer, tracking_uri
from metrics.pipeline_metric import PipelineMetric
from optimizers.params import parse_params
from optimizers.registry import prepare_optimizer, spec_for
from programs.builtin import BUILTINS, builtin_dataset
from programs.errors import ConfigError, DatasetError
from programs.loader import make_pipeline
from programs.pipeline import Pipeline

__all__ = ["CompileOptions", "compile_pipeline", "render_prompts", "versions"]

logger = logging.getLogger(__name__)


@dataclass
class CompileOptions:
    """What ``pipec compile`` was asked to do."""

    pipeline: str
    optimizer: str
    trainset: str | None = None
    valset: str | None = None
    params: Sequence[str] = ()
    lm: str | LMConfig | None = None
    api_base: str | None = None
    seed: int = 0
    out: str | None = None
    threads: int | None = None
    experiment: str = DEFAULT_EXPERIMENT
    progress: bool = True
    cache: bool = True
    extra_tags: dict[str, str] = field(default_factory=dict)
    judge_lm: str | LMConfig | None = None  # the writers' LLM judges; the task LM if None
    repeats: int = 1  # the final evaluation runs this many times, cache bypassed (experiments.repeats)
    max_cost: float | None = None  # US dollars the optimizer may spend (experiments.cost.run_capped)
    mlflow_records: bool = True  # datasets, registered prompts, traces (experiments.mlflow_native)
    mlflow_model: bool = True  # the compiled program as an mlflow.dspy model
    prompt_lm: str | LMConfig | None = None  # the LM that writes prompts (textual optimizers); the task LM if None
    store: str | None = None  # the flywheel store a store: trainset reads; $PIPEC_STORE or $PIPEC_HOME if None
    preflight: bool = True  # every remote LM answers one tiny request before the run (experiments.preflight)
    tracking_process: bool = True  # MLflow writes from a process of their own (experiments.tracking_writer)


def render_prompts(program: Pipeline, adapter: Any) -> dict[str, str]:
    """Each node's prompt as the LM sees it: instructions, demos, and ``{field}`` placeholders."""
    prompts = {}
    for name, node in program.nodes().items():
        inputs = {f: f"{{{f}}}" for f in node.input_fields}
        try:
            messages = adapter.format(node.signature, node.demos, inputs)
        except Exception as exc:  # rendering is telemetry; never fail the compile for it
            prompts[name] = f"(could not render: {type(exc).__name__}: {exc})"
            continue
        prompts[name] = "\n\n".join(f"=== {m['role']} ===\n{m['content']}" for m in messages)
    return prompts


def _save_program(program: dspy.Module, out: Path, meta: dict[str, str] | None = None) -> Path:
    """Saves atomically: a crash never leaves a half-written program file. ``meta`` records the
    pipeline the program belongs to (see experiments.program_meta)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=out.parent, suffix=".json", delete=False) as tmp:
        tmp_path = Path(tmp.name)
    try:
        program.save(str(tmp_path))
        if meta:
            stamp_program(tmp_path, meta)
        os.replace(tmp_path, out)
    finally:
        tmp_path.unlink(missing_ok=True)
    return out


@dataclass
class _Plan:
    """A compile whose inputs have all been checked."""

    pipeline: Pipeline
    trainset: Dataset
    train: list[dspy.Example]
    val: list[dspy.Example]
    val_source: str
    valset: Dataset | None
    lm: LMConfig
    metric: PipelineMetric
    prepared: Any
    threads: int
    out: Path
    native_max_cost: bool = False  # the optimizer takes max_cost itself (its budget stops it with its best)
    lms: list = field(default_factory=list)  # (flag, LM) for every LM the compile uses: preflight, config errors


def _short_name(spec: str) -> str:
    """The pipeline's short name: ``triage``, or ``mypipeline`` for ``path/to/file.py:MyPipeline``."""
    return Path(spec.split(":")[-1]).stem.lower()


def _plan(opts: CompileOptions) -> _Plan:
    pipeline = make_pipeline(opts.pipeline)
    train_path = opts.trainset
    if train_path is None:
        if opts.pipeline not in BUILTINS:
            raise DatasetError("--trainset is required for a pipeline that is not built in")
        train_path = str(builtin_dataset(opts.pipeline))
    trainset = load_dataset(train_path, pipeline, store=opts.store, pipeline_name=opts.pipeline)
    valset = load_dataset(opts.valset, pipeline, store=opts.store, pipeline_name=opts.pipeline) if opts.valset else None
    if valset is None:
        train, val = split_dataset(trainset.examples, seed=opts.seed)
        val_source = f"split of the trainset (seed {opts.seed}): {len(train)} train / {len(val)} val"
    else:
        train, val, val_source = list(trainset.examples), list(valset.examples), f"file {valset.path}"
    lm = opts.lm if isinstance(opts.lm, LMConfig) else make_lm(opts.lm, api_base=opts.api_base, cache=opts.cache)
    threads = opts.threads or (1 if lm.engine is not None else 8)
    params = parse_params(opts.params)
    native_max_cost = opts.max_cost is not None and takes_max_cost(opts.optimizer)
    if opts.max_cost is not None and opts.max_cost < 0:
        raise ConfigError(f"--max-cost {opts.max_cost}: expected dollars >= 0")
    if native_max_cost:
        params.setdefault("max_cost", opts.max_cost)
    judge = opts.judge_lm
    if isinstance(judge, str):
        judge = make_lm(judge, api_base=opts.api_base, cache=opts.cache, flag="--judge-lm")
    metric = PipelineMetric(pipeline, feedback=spec_for(opts.optimizer).feedback, judge_lm=judge)
    prompt_lm = opts.prompt_lm
    if isinstance(prompt_lm, str):
        prompt_lm = make_lm(prompt_lm, api_base=opts.api_base, cache=opts.cache, flag="--prompt-lm")
    prepared = prepare_optimizer(opts.optimizer, metric, params, seed=opts.seed, lm=lm.lm, threads=threads,
                                 prompt_lm=prompt_lm, store=opts.store)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    name = Path(opts.pipeline.split(":")[-1]).stem.lower()
    out = Path(opts.out) if opts.out else Path("compiled") / f"{name}-{opts.optimizer}-{stamp}.json"
    lms = lms_in(("--lm", lm), ("--judge-lm", judge), ("--prompt-lm", prompt_lm),
                 ("--optimizer", prepared.teleprompter))
    return _Plan(pipeline, trainset, train, val, val_source, valset, lm, metric, prepared, threads, out,
                 native_max_cost, lms)


def _params(opts: CompileOptions, plan: _Plan) -> dict[str, Any]:
    params: dict[str, Any] = {
        **pipeline_params(opts.pipeline, plan.pipeline, plan.lm.settings, plan.threads),
        "optimizer": opts.optimizer,
        "optimizer.settings": plan.prepared.settings,
        "judge_lm": (opts.judge_lm.settings.get("model") if isinstance(opts.judge_lm, LMConfig)
                     else opts.judge_lm or "(the task LM)"),
        "prompt_lm": (opts.prompt_lm.settings.get("model") if isinstance(opts.prompt_lm, LMConfig)
                      else opts.prompt_lm or "(the task LM)"),
        "seed": opts.seed,
        "trainset": {"path": plan.trainset.path, "size": len(plan.train), "file_size": len(plan.trainset),
                     "sha256": plan.trainset.digest},
        "valset": {"source": plan.val_source, "size": len(plan.val)},
        "options": recorded_options(opts),  # what `pipec compile --resume RUN_ID` re-runs
    }
    if plan.valset is not None:
        params["valset"].update({"path": plan.valset.path, "sha256": plan.valset.digest})
    for name, dataset in (("trainset", plan.trainset), ("valset", plan.valset)):
        if dataset is not None and dataset.provenance:  # store rows: which ones, and the store's state
            params[name]["store"] = dataset.provenance
    return params


def _evaluate(tracker: RunTracker, stage: str, program: Pipeline, plan: _Plan, opts: CompileOptions,
              repeats: int = 1) -> Stage:
    return run_stage(tracker, stage, program, plan.pipeline, plan.val, plan.metric, threads=plan.threads,
                     progress=opts.progress, repeats=repeats, repeat_lm=repeat_lm(plan.lm.lm) if repeats > 1 else None,
                     pipeline_name=opts.pipeline)


def compile_pipeline(opts: CompileOptions, say: Callable[[str], None] = logger.info) -> dict[str, Any]:
    """Compiles ``opts.pipeline`` with ``opts.optimizer`` and tracks the run.

    Args:
        opts: The compile request.
        say: Where progress lines go (the CLI prints them on stderr).

    Returns:
        The result: run id, baseline and compiled scores overall and per node, LM usage,
        the saved program's path.

    Raises:
        UserError: Bad pipeline, dataset, optimizer or setting, before any run is started.
    """
    if opts.tracking_process:
        start_writer()
    plan = _plan(opts)
    checked = preflight(plan.lms, say=say) if opts.preflight else None
    say(f"Valset: {plan.val_source}.")
    tracker = RunTracker(opts.experiment, run_name=f"{opts.pipeline.split(':')[-1]}-{opts.optimizer}",
                         tags={"pipec.kind": "compile", **opts.extra_tags}, in_process=not opts.tracking_process)
    started = time.perf_counter()
    with tracker.start(), dspy.context(lm=plan.lm.lm, adapter=plan.lm.adapter), \
            raise_config_errors(*(lm for _, lm in plan.lms)):
        tracker.params(_params(opts, plan))
        tracker.metrics(judge_alignment_metrics(plan.metric, opts.store))  # the judges vs people, from the store
        if checked is not None:
            tracker.metrics({"preflight.seconds": checked.seconds})
        if opts.mlflow_records:
            log_datasets(tracker, _short_name(opts.pipeline), plan.train, plan.val, plan.trainset.path,
                         plan.valset.path if plan.valset is not None else plan.trainset.path)
        say(f"Baseline: evaluating {len(plan.val)} examples on {plan.lm.settings['model']}.")
        with track_cost() as baseline_cost:
            baseline = _evaluate(tracker, "baseline", plan.pipeline, plan, opts).report
        say(f"Compiling with {opts.optimizer} on {len(plan.train)} examples.")
        compile_kwargs = dict(plan.prepared.compile_kwargs)
        if plan.prepared.uses_valset:
            compile_kwargs["valset"] = plan.val
        compile_start = time.perf_counter()
        with track_cost() as compile_cost, lm_usage() as usage, candidate_runs(tracker):
            compiled, stopped = run_capped(
                lambda: plan.prepared.teleprompter.compile(plan.pipeline.deepcopy(), trainset=plan.train,
                                                           **compile_kwargs),
                None if plan.native_max_cost else opts.max_cost, keep=plan.pipeline.deepcopy)
        if stopped:
            say(f"Stopped the optimizer: {stopped}.")
            tracker.params({"optimizer.stopped": stopped})
        tracker.metrics({"compile.lm_calls": usage.calls, "compile.tokens": usage.tokens,
                         "compile.seconds": time.perf_counter() - compile_start})
        chosen = getattr(plan.prepared.teleprompter, "chosen", None)
        if chosen:  # what a tuning optimizer settled on (knn's k, embedding, order), beside its settings
            tracker.params({"optimizer.chosen": chosen})
        # The best score so far after each candidate (pipec's textual optimizers): a stepped metric
        # whose chart in the MLflow UI is the search's trajectory.
        for step, best in getattr(plan.prepared.teleprompter, "trajectory", None) or []:
            tracker.metrics({"best_score": best}, step=step)
        # Written by the tracker's side threads while the final evaluation keeps the LM busy.
        if opts.mlflow_records:
            register_prompts(tracker, _short_name(opts.pipeline), compiled)
        if opts.mlflow_model:
            log_program_model(tracker, compiled, meta=program_meta(opts.pipeline, plan.pipeline))
        say(f"Compiled: evaluating {len(plan.val)} examples"
            + (f", {opts.repeats} times." if opts.repeats > 1 else "."))
        with track_cost() as compiled_cost:
            final = _evaluate(tracker, "compiled", compiled, plan, opts, repeats=opts.repeats)
        result, repeats = final.report, final.repeats
        if opts.mlflow_records:  # first: MLflow exports them on its own threads while the rest is written
            log_traces(tracker, _short_name(opts.pipeline), "compiled", result, plan.val)
        if repeats is not None:  # every repeat asked the LM again: the cache was bypassed
            repeats["resampling"] = resampling(repeat_lm(plan.lm.lm))
            tracker.params({"repeats": opts.repeats, "resampling": repeats["resampling"]})
        program_path = _save_program(compiled, plan.out, program_meta(opts.pipeline, plan.pipeline))
        tracker.file(program_path, "program")
        for node, text in render_prompts(compiled, plan.lm.adapter).items():
            tracker.text(text, f"prompts/{node}.txt")
        cost = log_cost(tracker, {"baseline": baseline_cost, "compile": compile_cost, "compiled": compiled_cost})
        total = baseline.usage.calls + usage.calls + result.usage.calls
        tracker.metrics({"lm_calls": total, "tokens": baseline.usage.tokens + usage.tokens + result.usage.tokens,
                         "seconds": time.perf_counter() - started})
    return {
        "run_id": tracker.run_id,
        "experiment_id": tracker.experiment_id,
        "tracking_uri": tracking_uri(),
        "pipeline": opts.pipeline,
        "optimizer": opts.optimizer,
        "lm": plan.lm.settings["model"],
        "seed": opts.seed,
        "trainset": {"path": plan.trainset.path, "size": len(plan.train)},
        "valset": {"source": plan.val_source, "size": len(plan.val)},
        "baseline": baseline.summary(),
        "compiled": result.summary(),
        "compile": {"lm_calls": usage.calls, "tokens": usage.tokens},
        "program_path": str(program_path),
        "cost": cost,
        "seconds": time.perf_counter() - started,
        **({"repeats": repeats} if repeats is not None else {}),
    }
