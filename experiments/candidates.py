"""The optimizer's candidate evaluations as MLflow child runs of the compile run.

Optimizers score candidate programs with ``dspy.Evaluate``; a DSPy callback sees each of those
evaluations and records it as a child run: its score, the candidate's instructions and demo
count per node, the program state (``model.json``) and a per-example result table. The runs are
written by the compile run's background writer, so the optimizer never waits on the store.

This takes the place of ``mlflow.dspy.autolog``, which logs the same child runs but writes them
in line with the compile (about ten store commits per candidate, each one an fsync with sqlite)
and, being process-wide, keeps patching DSPy after the compile is over.
"""

from __future__ import annotations

import json
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dspy
from dspy.utils.callback import BaseCallback

from experiments.liveness import process_tags
from experiments.tracking import RunTracker, _param_value
from programs.trace import EVALUATIONS_ONLY

__all__ = ["CandidateRuns", "candidate_runs"]


def _score(outputs: Any) -> float | None:
    score = getattr(outputs, "score", outputs)
    if isinstance(score, tuple):  # older DSPy returned (score, results)
        score = score[0]
    try:
        return float(score)
    except (TypeError, ValueError):
        return None


def _result_table(results: Any) -> dict[str, list[Any]]:
    """``{column: values}`` with ``example_<field>``, ``pred_<field>`` and ``score`` columns."""
    rows = [(dict(example.items()), dict(pred.items()) if hasattr(pred, "items") else {}, score)
            for example, pred, score in results or ()]
    columns = {f"example_{k}" for e, _, _ in rows for k in e} | {f"pred_{k}" for _, p, _ in rows for k in p}
    table: dict[str, list[Any]] = {c: [] for c in sorted(columns)}
    table["score"] = []
    for example, pred, score in rows:
        for column in table:
            if column.startswith("example_"):
                value = example.get(column[len("example_"):])
            elif column.startswith("pred_"):
                value = pred.get(column[len("pred_"):])
            else:
                value = getattr(score, "score", score)
            table[column].append(value if value is None or isinstance(value, int | float | str | bool) else str(value))
    return table


def _node_params(state: dict[str, Any]) -> dict[str, str]:
    """Per predictor: its instructions and how many demos it carries."""
    params = {}
    for name, value in state.items():
        if isinstance(value, dict) and "demos" in value:
            params[f"{name}.demos"] = str(len(value.get("demos") or []))
            instructions = (value.get("signature") or {}).get("instructions")
            if instructions is not None:
                params[f"{name}.instructions"] = _param_value(instructions)
    return params


class CandidateRuns(BaseCallback):
    """A DSPy callback: every ``dspy.Evaluate`` call becomes a child run of ``tracker``'s run.

    Evaluations whose ``callback_metadata`` asks for ``disable_logging`` (GEPA's minibatches) are
    skipped; ``pipec.*`` keys (pipec's textual optimizers: candidate, parent, step, origin, node)
    become the child run's tags; a ``metric_key`` (MIPROv2's ``eval_full``/``eval_minibatch``) names the run and the
    metric. The parent run gets the metric too, one step per evaluation (:meth:`log_parent_metrics`).
    """

    def __init__(self, tracker: RunTracker) -> None:
        super().__init__()
        # Only evaluations matter here: the program calls inside them run without this callback.
        setattr(self, EVALUATIONS_ONLY, True)
        self.tracker = tracker
        self._lock = threading.Lock()
        self._steps: defaultdict[str, int] = defaultdict(int)
        self._open: dict[str, tuple[str, int, dict[str, Any], int]] = {}
        self._parent_metrics: list[tuple[str, float, int, int]] = []
        self._labels: dict[str, dict[str, str]] = {}  # call id -> the optimizer's pipec.* metadata, as tags
        self._process = process_tags()  # the child runs name their process too (experiments.liveness)

    def log_parent_metrics(self) -> None:
        """Queues every candidate's score as a step of the parent run's metric, in one write."""
        from mlflow.entities import Metric

        with self._lock:
            metrics = [Metric(key, score, stamp, step) for key, score, stamp, step in self._parent_metrics]
            self._parent_metrics = []
        self.tracker.log_batch(metrics=metrics)

    def on_evaluate_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        metadata = inputs.get("callback_metadata") or {}
        if metadata.get("disable_logging") or self.tracker.run_id is None:
            return
        key = str(metadata.get("metric_key", "eval"))
        program = inputs.get("program")
        # The state now, before the optimizer goes on to change the program.
        state = program.dump_state() if program is not None else {}
        with self._lock:
            step = self._steps[key]
            self._steps[key] += 1
            self._open[call_id] = (key, step, state, int(time.time() * 1000))
            # An optimizer may say which candidate this is (pipec.candidate, pipec.parent, pipec.step, ...).
            self._labels[call_id] = {str(k): str(v) for k, v in metadata.items() if str(k).startswith("pipec.")}

    def on_evaluate_end(self, call_id: str, outputs: Any | None, exception: BaseException | None = None) -> None:
        with self._lock:
            opened = self._open.pop(call_id, None)
            labels = self._labels.pop(call_id, {})
        if opened is None:
            return
        key, step, state, started = opened
        score = None if exception is not None else _score(outputs)
        table = _result_table(getattr(outputs, "results", None)) if exception is None else None
        ended = int(time.time() * 1000)
        experiment_id, process = self.tracker.experiment_id, self._process

        def write(client: Any, parent_id: str) -> None:
            from mlflow.entities import Metric, Param
            from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
            from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

            # Three store operations per candidate (each a commit, an fsync with sqlite): the
            # table's UI tag goes in with the run. The artifacts are files, written in one upload
            # to the new run's artifact location (``log_text`` would read the run back to find it).
            tags = {**labels, MLFLOW_PARENT_RUN_ID: parent_id, "pipec.kind": "candidate", **process}
            if table is not None:
                tags["mlflow.loggedArtifacts"] = json.dumps([{"path": "result_table.json", "type": "table"}])
            run = client.create_run(experiment_id, start_time=started, run_name=f"{key}_{step}", tags=tags)
            run_id = run.info.run_id
            metrics = [Metric(key, score, ended, 0)] if score is not None else []
            params = [Param(k, v) for k, v in _node_params(state).items()]
            client.log_batch(run_id, metrics=metrics, params=params)
            with tempfile.TemporaryDirectory(prefix="pipec-candidate-") as tmp:
                Path(tmp, "model.json").write_text(json.dumps(state, ensure_ascii=False, default=str, indent=2),
                                                   encoding="utf-8")
                if table is not None:
                    columns = list(table)
                    rows = [list(values) for values in zip(*table.values(), strict=True)]
                    Path(tmp, "result_table.json").write_text(
                        json.dumps({"columns": columns, "data": rows}, ensure_ascii=False), encoding="utf-8")
                get_artifact_repository(run.info.artifact_uri, tracking_uri=client.tracking_uri).log_artifacts(tmp)
            client.set_terminated(run_id, "FINISHED" if exception is None else "FAILED", end_time=ended)

        if score is not None:
            with self._lock:
                self._parent_metrics.append((key, score, ended, step))
        self.tracker.submit(f"logging candidate evaluation {key}_{step}", write)


@contextmanager
def candidate_runs(tracker: RunTracker) -> Iterator[CandidateRuns]:
    """Records every ``dspy.Evaluate`` call inside the block as a child run of ``tracker``'s run."""
    callback = CandidateRuns(tracker)
    try:
        with dspy.context(callbacks=[*dspy.settings.callbacks, callback]):
            yield callback
    finally:
        callback.log_parent_metrics()
