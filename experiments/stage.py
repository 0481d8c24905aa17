"""What compile and evaluate runs share: an evaluation stage, and the params that describe a run.

A stage (``baseline``, ``compiled``, ``evaluate``) runs the program over examples through the one
core (``experiments.evaluate.evaluate_program`` -> ``experiments.runner.run_traced``), once or
``repeats`` times, and records the same things in every run that has it:

- metrics ``<stage>.score``, ``<stage>.lm_errors``, ... and the per-node reports
  (``experiments.reports``); with repeats, ``<stage>.repeats.*`` (``experiments.repeats``);
- ``evaluation/<stage>.jsonl``: per example its inputs, outputs, score (null when the LM did not
  answer), every node's verdict and output, and every node call;
- ``evaluation/<stage>_repeats.json`` when it was repeated.
"""

from __future__ import annotations

import functools
import json
import platform
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from typing import Any

import dspy

from experiments.evaluate import EvalReport, evaluate_program
from experiments.repeats import repeat_metrics, repeat_summary
from experiments.reports import log_node_reports
from experiments.tracking import RunTracker, code_version
from metrics.pipeline_metric import PipelineMetric
from programs.pipeline import Pipeline

__all__ = ["Stage", "pipeline_params", "results_jsonl", "run_stage", "versions"]


@dataclass
class Stage:
    """One evaluated stage of a run.

    Attributes:
        name: ``baseline``, ``compiled`` or ``evaluate``.
        report: The evaluation (the first one when repeated).
        nodes: Per node: kind, score, pass rate, judged counts; classifiers add their report.
        repeats: The repeat summary (mean, interval, flips) when the stage ran more than once.
    """

    name: str
    report: EvalReport
    nodes: dict[str, dict[str, Any]]
    repeats: dict[str, Any] | None = None

    def summary(self) -> dict[str, Any]:
        """The report's summary (the CLI's JSON and the run result)."""
        return self.report.summary()


def results_jsonl(report: EvalReport, examples: Sequence[dspy.Example]) -> str:
    """The per-example artifact: one JSON line per example (Japanese kept as it is)."""
    lines = []
    for r in report.results:
        example = examples[r.index]
        outputs = dict(r.prediction.items()) if r.prediction is not None else None
        calls = r.trace.calls if r.trace is not None else []
        lines.append(json.dumps({
            "example": r.index, "inputs": dict(example.inputs().items()), "outputs": outputs,
            "score": r.score if r.counted else None, "error": r.error, "lm_error": r.lm_error,
            "nodes": {n: {"score": v.score if v.counted else None, "passed": v.passed, "feedback": v.feedback,
                          "output": r.node_output(n)}
                      for n, v in r.verdicts.items()},
            "calls": [{"node": c.node, "output": c.output, "seconds": round(c.seconds, 4), "lm_calls": c.lm_calls,
                       "error": c.error} for c in calls],
        }, ensure_ascii=False, default=str))
    return "\n".join(lines) + "\n"


def run_stage(tracker: RunTracker, name: str, program: dspy.Module, pipeline: Pipeline,
              examples: Sequence[dspy.Example], metric: PipelineMetric, *, threads: int, progress: bool,
              repeats: int = 1, repeat_lm: Any = None, pipeline_name: str = "") -> Stage:
    """Evaluates ``program`` on ``examples`` (``repeats`` times, on ``repeat_lm`` when repeated) and
    records the stage in ``tracker``'s run.

    Raises:
        LMError: The LM could not answer (see ``evaluate_program``).
    """
    def once() -> EvalReport:
        return evaluate_program(program, examples, metric, threads=threads, progress=progress,
                                pipeline_name=pipeline_name)

    summary = None
    if repeats > 1:
        with dspy.context(lm=repeat_lm or dspy.settings.lm):
            reports = [once() for _ in range(repeats)]
        summary = repeat_summary(reports, examples)
        tracker.metrics(repeat_metrics(name, summary))
        tracker.text(json.dumps(summary, ensure_ascii=False, indent=1), f"evaluation/{name}_repeats.json")
        report = reports[0]
    else:
        report = once()
    tracker.metrics(report.metrics(name))
    tracker.text(results_jsonl(report, examples), f"evaluation/{name}.jsonl")
    nodes = log_node_reports(tracker, name, pipeline, report, examples)
    return Stage(name, report, nodes, summary)


def versions() -> dict[str, str]:
    """Versions of pipec and what it runs on."""
    return dict(_versions())


@functools.cache
def _versions() -> dict[str, str]:  # installed versions stay for the process: read once (100 ms of metadata scans)
    found = {"python": platform.python_version()}
    for dist in ("pipec", "dspy", "mlflow", "duckdb", "llama-cpp-python", "litellm"):
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return found


def pipeline_params(spec: str, pipeline: Pipeline, lm_settings: dict[str, Any], threads: int) -> dict[str, Any]:
    """The params every run records about what ran: the pipeline (spec, class, nodes), the LM,
    the threads, the versions of pipec and what it runs on, and the code's git commit (and the
    pipeline file's, for ``path/to/file.py:Class``)."""
    cls = type(pipeline)
    params: dict[str, Any] = {
        "pipeline": spec,
        "pipeline.class": f"{cls.__module__}.{cls.__qualname__}",
        "pipeline.nodes": {n: node.kind for n, node in pipeline.nodes().items()},
        "lm": lm_settings,
        "threads": threads,
        "version": versions(),
    }
    params.update(code_version())
    if ":" in spec:
        params.update({f"pipeline_file.{k}": v for k, v in code_version(spec.rsplit(":", 1)[0]).items()})
    return params
