"""Per-node reports of an evaluation, and their place in an MLflow run.

For every node: its mean score, pass rate and judge failures. For classifier nodes also
per-label precision/recall/F1, macro-F1 and the confusion matrix. For every example and node: a
row of the verdicts table (score, passed, feedback), so a user can see why each example failed.

In the run, under the stage name (``baseline``, ``compiled``, ``evaluate``):

- metrics ``<stage>.node.<name>.pass_rate`` / ``.judge_failures``, and for classifiers
  ``<stage>.node.<name>.macro_f1``, ``.accuracy`` and ``<stage>.node.<name>.label.<label>.f1``
  / ``.precision`` / ``.recall``;
- ``evaluation/<stage>_verdicts.json`` (an MLflow table), ``evaluation/<stage>_<node>_classification.json``
  and ``evaluation/<stage>_<node>_confusion.png``.
"""

from __future__ import annotations

import functools
import json
import re
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import dspy

from experiments.evaluate import EvalReport
from experiments.plots import confusion_png
from experiments.tracking import RunTracker
from metrics.classification import ClassificationReport, classification_report
from programs.nodes import Classifier
from programs.pipeline import Pipeline

__all__ = ["classifier_reports", "log_node_reports", "node_details", "node_metrics", "verdict_table"]

_UNSAFE = re.compile(r"[^\w.\- /:]", re.UNICODE)  # what MLflow refuses in a metric name


def _metric_name(text: str) -> str:
    return _UNSAFE.sub("_", str(text)) or "_"


def classifier_reports(pipeline: Pipeline, report: EvalReport,
                       examples: Sequence[dspy.Example]) -> dict[str, ClassificationReport]:
    """A classification report per classifier node that has a gold field."""
    reports = {}
    for name, node in pipeline.nodes().items():
        field = pipeline.gold.get(name)
        if not isinstance(node, Classifier) or field is None:
            continue
        pairs = []
        for r in report.results:
            if r.lm_error:  # no answer is not a wrong label
                continue
            pairs.append((examples[r.index].get(field), r.node_output(name)))
        reports[name] = classification_report(pairs, node.labels)
    return reports


def node_details(pipeline: Pipeline, report: EvalReport, examples: Sequence[dspy.Example]) -> dict[str, dict]:
    """Per node: kind, mean score, pass rate, judged/unjudged counts; classifiers add their report."""
    scores = report.nodes
    classification = classifier_reports(pipeline, report, examples)
    details = {}
    for name, node in pipeline.nodes().items():
        verdicts = [r.verdicts[name] for r in report.results if name in r.verdicts]
        entry: dict[str, Any] = {
            "kind": node.kind,
            "score": scores.get(name, 0.0),
            "pass_rate": sum(v.passed for v in verdicts) / len(verdicts) if verdicts else 0.0,
            "judged": sum(v.counted for v in verdicts),
            "judge_failures": sum(int(v.details.get("judge_failures", 0)) for v in verdicts),
        }
        if name in classification:
            entry.update(classification[name].as_dict())
        details[name] = entry
    return details


def node_metrics(stage: str, details: dict[str, dict]) -> dict[str, float]:
    """The MLflow metrics of :func:`node_details` under ``stage``."""
    metrics: dict[str, float] = {}
    for name, entry in details.items():
        prefix = f"{stage}.node.{_metric_name(name)}"
        metrics[f"{prefix}.pass_rate"] = entry["pass_rate"]
        metrics[f"{prefix}.judge_failures"] = entry["judge_failures"]
        if "macro_f1" in entry:
            metrics[f"{prefix}.macro_f1"] = entry["macro_f1"]
            metrics[f"{prefix}.accuracy"] = entry["accuracy"]
            for label, scores in entry["labels"].items():
                for key in ("precision", "recall", "f1"):
                    metrics[f"{prefix}.label.{_metric_name(label)}.{key}"] = scores[key]
    return metrics


def verdict_table(pipeline: Pipeline, report: EvalReport, examples: Sequence[dspy.Example]) -> dict[str, list]:
    """One row per example and node: ``example`` (its index), ``example_id`` (its ``id`` field,
    else the index), ``node``, ``output``, ``score`` (None when it could not be judged),
    ``passed``, ``counted``, ``feedback``, and the example's ``inputs`` (as JSON)."""
    columns: dict[str, list] = {k: [] for k in ("example", "example_id", "node", "output", "score", "passed",
                                                "counted", "feedback", "inputs")}
    for r in report.results:
        example = examples[r.index]
        inputs = json.dumps(dict(example.inputs().items()), ensure_ascii=False, default=str)
        for node, verdict in r.verdicts.items():
            output = r.node_output(node)
            columns["example"].append(r.index)
            columns["example_id"].append(str(example.get("id", r.index)))
            columns["node"].append(node)
            columns["output"].append(None if output is None else str(output))
            columns["score"].append(verdict.score if verdict.counted else None)
            columns["passed"].append(verdict.passed)
            columns["counted"].append(verdict.counted)
            columns["feedback"].append(verdict.feedback)
            columns["inputs"].append(inputs)
    return columns


def _log_bytes(tracker: RunTracker, render: Callable[[], bytes], artifact_file: str) -> None:
    """Logs ``render()``; it runs on the tracker's writer thread, off the compile's critical path."""
    directory, _, name = artifact_file.rpartition("/")

    def write(client: Any, run_id: str) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / name
            path.write_bytes(render())
            client.log_artifact(run_id, str(path), directory or None)

    tracker.submit(f"logging artifact {artifact_file}", write)


def log_node_reports(tracker: RunTracker, stage: str, pipeline: Pipeline, report: EvalReport,
                     examples: Sequence[dspy.Example]) -> dict[str, dict]:
    """Logs the per-node metrics, the verdicts table and the classifier reports of ``stage``.

    Returns:
        The :func:`node_details`.
    """
    details = node_details(pipeline, report, examples)
    tracker.metrics({f"{stage}.judge_failures": report.judge_failures, **node_metrics(stage, details)})
    table = verdict_table(pipeline, report, examples)
    tracker.submit("logging the verdicts table", lambda client, run_id: client.log_table(
        run_id, data=table, artifact_file=f"evaluation/{stage}_verdicts.json"))
    for name, classification in classifier_reports(pipeline, report, examples).items():
        stem = f"evaluation/{stage}_{_metric_name(name).replace('/', '_')}"
        text = json.dumps(classification.as_dict(), ensure_ascii=False, indent=2)
        tracker.text(text, f"{stem}_classification.json")
        # Drawn by the writer (a few ms with Pillow), while the compile goes on.
        _log_bytes(tracker, functools.partial(confusion_png, classification, f"{name} ({stage})"),
                   f"{stem}_confusion.png")
    return details
