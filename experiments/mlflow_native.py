"""MLflow-native records of a compile, so the MLflow UI's own features work on it:

- the train and val sets as **dataset inputs** of the run (name, digest, source, context);
- each node's compiled instruction as a version of the prompt ``<pipeline>.<node>`` in the
  **Prompt Registry** (alias ``current``: the newest compile; the version's tag ``pipec.run_id``
  names its run), linked to the run, so the UI lists the run's prompts and diffs their versions;
- the compiled program as a **logged model** of the ``mlflow.dspy`` flavor, which loads back with
  ``mlflow.dspy.load_model(f"models:/{model_id}")`` (or as pyfunc) and answers once an LM is
  configured (MLflow loads DSPy programs with pickle: set ``MLFLOW_ALLOW_PICKLE_DESERIALIZATION=true``);
- a sample of the final evaluation's examples as **traces**: one trace per example with a span
  per node call (inputs, outputs, seconds, tokens, error).

All of it is telemetry: the data is copied on the caller's thread (cheap), and the MLflow writes
run on the run tracker's writer thread, off the compile's LM path; a failure is a warning.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping, Sequence
from importlib import metadata
from typing import TYPE_CHECKING, Any

from experiments.tracking_writer import call_with

if TYPE_CHECKING:  # the tracker's writer process imports this module for its trace writes: no DSPy there
    import dspy

    from experiments.tracking import RunTracker
    from programs.pipeline import Pipeline

__all__ = ["PROMPT_ALIAS", "TRACE_SAMPLE", "log_dataset", "log_datasets", "log_program_model", "log_traces",
           "prompt_name", "register_prompts"]

PROMPT_ALIAS = "current"  # the prompt version of the newest compile ("latest" is MLflow's own, reserved)
TRACE_SAMPLE = 5  # examples of the final evaluation recorded as traces (each costs sqlite writes)

_PROMPT_UNSAFE = re.compile(r"[^a-zA-Z0-9_.-]+")  # what MLflow refuses in a prompt name


def prompt_name(pipeline: str, node: str) -> str:
    """The Prompt Registry name of a node: ``<pipeline>.<node>`` in MLflow's allowed characters."""
    name = f"{pipeline}.{node}"
    return _PROMPT_UNSAFE.sub("_", name).strip("_") or "pipeline"


def _cell(value: Any) -> Any:
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return json.dumps(value, ensure_ascii=False, default=str)


def _source(source: str) -> Any:
    """A dataset file as MLflow's local-file source (named, so MLflow need not guess and warn)."""
    from pathlib import Path

    from mlflow.data.dataset_source_registry import get_registered_sources

    path = Path(source)
    if not path.exists():
        return source  # a store: query and the like; MLflow resolves what it can
    local = next((cls for cls in get_registered_sources() if cls.__name__ == "LocalArtifactDatasetSource"), None)
    return local(str(path.resolve())) if local is not None else str(path.resolve())


def log_dataset(tracker: RunTracker, examples: Sequence[dspy.Example], *, name: str, source: str,
                context: str) -> None:
    """Logs ``examples`` as a dataset input of the run (``context``: ``train``, ``val``, ``eval``).

    The digest is MLflow's hash of the rows, so the same rows always show the same digest.
    """
    rows = [{k: _cell(v) for k, v in example.items()} for example in examples]

    def write(client: Any, run_id: str) -> None:
        import mlflow.data
        import pandas as pd
        from mlflow.entities import DatasetInput, InputTag
        from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

        dataset = mlflow.data.from_pandas(pd.DataFrame(rows), source=_source(source), name=name)
        client.log_inputs(run_id, datasets=[DatasetInput(dataset._to_mlflow_entity(),
                                                         [InputTag(MLFLOW_DATASET_CONTEXT, context)])])

    tracker.submit(f"logging dataset {name}", write)


def log_datasets(tracker: RunTracker, pipeline: str, train: Sequence[dspy.Example], val: Sequence[dspy.Example],
                 train_source: str, val_source: str) -> None:
    """Logs a compile's train and val sets as ``<pipeline>-train`` and ``<pipeline>-val``."""
    log_dataset(tracker, train, name=f"{pipeline}-train", source=train_source, context="train")
    log_dataset(tracker, val, name=f"{pipeline}-val", source=val_source, context="val")


def _prompt_template(node: Any) -> str:
    """The node's instruction, then its inputs as ``{{field}}`` variables (the registry's syntax)."""
    instructions = (node.signature.instructions or "").strip()
    fields = "\n".join(f"{field}: {{{{{field}}}}}" for field in node.input_fields)
    return f"{instructions}\n\n{fields}" if fields else instructions


def register_prompts(tracker: RunTracker, pipeline: str, program: Pipeline) -> None:
    """Registers each node's instruction as a new version of ``<pipeline>.<node>`` and links it
    to the run; the version gets the alias ``current`` and the tag ``pipec.run_id``."""
    nodes = {name: (_prompt_template(node), len(node.demos), node.kind, node.output_field)
             for name, node in program.nodes().items()}

    def write(client: Any, run_id: str) -> None:
        for node, (template, demos, kind, output) in nodes.items():
            name = prompt_name(pipeline, node)
            version = client.register_prompt(
                name=name, template=template, commit_message=f"pipec compile, run {run_id}",
                tags={"pipec.run_id": run_id, "pipec.pipeline": pipeline, "pipec.node": node,
                      "pipec.kind": kind, "pipec.output": output, "pipec.demos": str(demos)})
            client.set_prompt_alias(name, PROMPT_ALIAS, version.version)
            client.link_prompt_version_to_run(run_id, version)

    tracker.submit("registering the prompts", write, side=True)  # beside the candidate runs still queued


def _requirements() -> list[str]:
    found = []
    for dist in ("dspy", "pipec"):
        try:
            found.append(f"{dist}=={metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            pass
    return found


def log_program_model(tracker: RunTracker, program: Pipeline, *, name: str = "program",
                      meta: Mapping[str, str] | None = None) -> None:
    """Logs ``program`` as an MLflow model of the ``mlflow.dspy`` flavor, an output of the run.

    The requirements are given (not inferred: inference loads the model in a subprocess, seconds
    of work), and DSPy's own saving is used (``use_dspy_model_save``). The steps are
    ``mlflow.models.Model.log``'s (a logged model with the run's params, the run's output, the
    flavor's files, READY or FAILED), less its copy of every step-0 metric of the run onto the
    model: it reads each metric's history back (one query per metric, a second of CPU after the
    last LM call of a compile), and would give the compiled program the baseline's scores.
    """
    program = program.deepcopy()  # the caller's program may change while the writer saves this one
    # As queued now: this runs on a side thread, so the writer may not have written them yet.
    params, experiment_id = tracker.queued_params(), tracker.experiment_id

    def write(client: Any, run_id: str) -> None:
        import os
        import tempfile

        import mlflow.dspy
        from mlflow.entities import LoggedModelOutput, LoggedModelStatus
        from mlflow.models import Model

        model = client.create_logged_model(experiment_id=experiment_id, name=name, source_run_id=run_id,
                                           params=params,
                                           tags={"pipec.run_id": run_id})
        try:
            client.log_outputs(run_id, [LoggedModelOutput(model.model_id, step=0)])
            with tempfile.TemporaryDirectory(prefix="pipec-model-") as tmp:
                path = os.path.join(tmp, "model")
                mlflow_model = Model(artifact_path=model.artifact_location, model_uuid=model.model_id, run_id=run_id,
                                     metadata=dict(meta or {}), model_id=model.model_id)
                mlflow.dspy.save_model(program, path, mlflow_model=mlflow_model, pip_requirements=_requirements(),
                                       use_dspy_model_save=True)
                client.log_model_artifacts(model.model_id, path)
        except Exception:
            client.finalize_logged_model(model.model_id, LoggedModelStatus.FAILED)
            raise
        client.finalize_logged_model(model.model_id, LoggedModelStatus.READY)

    tracker.submit("logging the program as an MLflow model", write, side=True)


def _trace_rows(report: Any, examples: Sequence[dspy.Example], sample: int) -> list[dict[str, Any]]:
    rows = []
    for result in report.results[:sample]:
        trace = getattr(result, "trace", None)
        calls = [call.as_dict() for call in getattr(trace, "calls", None) or []]
        outputs = dict(result.prediction.items()) if result.prediction is not None else None
        rows.append({
            "index": result.index, "inputs": dict(examples[result.index].inputs().items()), "outputs": outputs,
            "score": result.score, "error": result.error, "seconds": result.seconds, "calls": calls,
            "verdicts": {n: {"score": v.score, "passed": v.passed, "feedback": v.feedback}
                         for n, v in result.verdicts.items()},
        })
    return rows


def log_traces(tracker: RunTracker, pipeline: str, stage: str, report: Any, examples: Sequence[dspy.Example],
               *, sample: int = TRACE_SAMPLE) -> None:
    """Records the first ``sample`` examples of ``report`` as MLflow traces of the run.

    A trace per example (inputs, outputs, score, each node's verdict as attributes) with a span
    per node call (the node's inputs and outputs, seconds, LM calls and tokens, error). The
    spans are laid out on the calls' measured durations.
    """
    rows = _trace_rows(report, examples, sample)
    experiment_id = tracker.experiment_id
    # The spans are MLflow's live objects: the whole write runs where the client is.
    tracker.submit("logging traces", lambda client, run_id: call_with(
        client, _write_traces, run_id, experiment_id, pipeline, stage, rows), side=True)


def _write_traces(client: Any, run_id: str, experiment_id: str | None, pipeline: str, stage: str,
                  rows: Sequence[Mapping[str, Any]]) -> None:
    """Writes :func:`log_traces`' rows as traces of ``run_id`` and waits until they are stored."""
    written: dict[str, int] = {}  # trace id -> its spans
    for row in rows:
        end = time.time_ns()
        start = end - int(row["seconds"] * 1e9)
        root = client.start_trace(
            name=pipeline, span_type="CHAIN", inputs=row["inputs"], experiment_id=experiment_id,
            run_id=run_id, start_time_ns=start,
            tags={"pipec.stage": stage, "pipec.example": str(row["index"])},
            attributes={"pipec.score": row["score"],
                        "pipec.verdicts": json.dumps(row["verdicts"], ensure_ascii=False)})
        at = start
        for call in row["calls"]:
            span = client.start_span(
                name=call["node"], trace_id=root.trace_id, parent_id=root.span_id, span_type="LLM",
                inputs=call["inputs"], start_time_ns=at,
                attributes={k: call.get(k) for k in ("kind", "position", "lm_calls", "prompt_tokens",
                                                     "completion_tokens", "seconds")})
            at += int((call.get("seconds") or 0.0) * 1e9)
            status = "ERROR" if call.get("error") else "OK"
            if call.get("error"):
                span.set_attribute("pipec.error", call["error"])
            client.end_span(trace_id=root.trace_id, span_id=span.span_id, outputs=call.get("outputs"),
                            status=status, end_time_ns=max(at, start))
        client.end_trace(root.trace_id, outputs=row["outputs"], status="ERROR" if row["error"] else "OK",
                         end_time_ns=max(end, at))
        written[root.trace_id] = 1 + len(row["calls"])
    _wait_for_traces(client, written)


def _wait_for_traces(client: Any, written: Mapping[str, int], timeout: float = 10.0) -> None:
    """Returns once every trace in ``written`` (trace id -> its number of spans) reads back whole
    from the store (its spans, its state, its ``pipec.stage`` tag).

    MLflow exports traces on its own threads, and its flush (``mlflow.flush_trace_async_logging``)
    waits two polls of a second each whatever is left, where the traces are usually stored in well
    under a second. The flush is the fallback."""
    import mlflow

    pending = dict(written)
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        for trace_id, spans in list(pending.items()):  # in the order written: stop at the first one missing
            try:
                trace = client.get_trace(trace_id)
            except Exception:  # not stored yet
                break
            # The trace's own record (state, tags, metadata) is written last, after its spans.
            if ("pipec.stage" not in trace.info.tags or "IN_PROGRESS" in str(trace.info.state)
                    or len(trace.data.spans) < spans):
                break
            del pending[trace_id]
        if pending:
            time.sleep(0.05)
    if pending:
        mlflow.flush_trace_async_logging()
