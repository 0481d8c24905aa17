"""Reading tracked runs back from MLflow."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

from programs.errors import ConfigError

__all__ = ["STATUSES", "list_runs", "parse_since", "show_run"]


STATUSES = ("RUNNING", "SCHEDULED", "FINISHED", "FAILED", "KILLED")
_RELATIVE = re.compile(r"^\s*(\d+)\s*([mhdw])\s*$")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """``--since``: an ISO date or time (``2026-11-25``, ``2026-11-25T14:00``; UTC unless it has an
    offset) or an age (``30m``, ``12h``, ``3d``, ``2w``).

    Raises:
        ConfigError: Neither form.
    """
    match = _RELATIVE.match(text)
    if match:
        return (now or datetime.now(UTC)) - timedelta(**{_UNITS[match[2]]: int(match[1])})
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError as exc:
        raise ConfigError(f"--since {text!r}: expected a date such as 2026-11-25, a time such as "
                          "2026-11-25T14:00, or an age such as 30m, 12h, 3d, 2w") from exc
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _filter(kind: str, pipeline: str | None, optimizer: str | None, status: str | None,
            since: datetime | None) -> str:
    clauses = [f"tags.`pipec.kind` = {_quote(kind)}"]
    if pipeline:
        clauses.append(f"params.pipeline = {_quote(pipeline)}")
    if optimizer:
        clauses.append(f"params.optimizer = {_quote(optimizer)}")
    if status:
        if status.upper() not in STATUSES:
            raise ConfigError(f"--status {status!r}: choose one of {', '.join(STATUSES)}")
        clauses.append(f"attributes.status = {_quote(status.upper())}")
    if since is not None:
        clauses.append(f"attributes.start_time >= {int(since.timestamp() * 1000)}")
    return " AND ".join(clauses)


def list_runs(experiment: str, limit: int = 20, *, pipeline: str | None = None, optimizer: str | None = None,
              status: str | None = None, since: datetime | None = None) -> list[dict[str, Any]]:
    """The experiment's compile runs, newest first, as plain dicts.

    Args:
        experiment: The MLflow experiment's name.
        limit: At most this many runs.
        pipeline, optimizer: Only runs of this pipeline spec / optimizer name.
        status: Only runs in this state (FINISHED, FAILED, KILLED, RUNNING).
        since: Only runs started at or after this time.

    Raises:
        TrackingStoreError: The tracking URI names a store that cannot be opened.
        ConfigError: No such experiment.
    """
    from mlflow.tracking import MlflowClient

    from experiments.liveness import KILLED_REASON_TAG, check_tracking_uri, mark_killed_runs

    client = MlflowClient(check_tracking_uri())  # checked first: MLflow retries a bad store for minutes
    mark_killed_runs("pipec runs list", client)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        known = [e.name for e in client.search_experiments()]
        raise ConfigError(f"no MLflow experiment {experiment!r}; experiments: {', '.join(known) or 'none'}")
    runs = client.search_runs([found.experiment_id],
                              filter_string=_filter("compile", pipeline, optimizer, status, since),
                              order_by=["attributes.start_time DESC"], max_results=limit)
    rows = []
    for run in runs:
        params, metrics = run.data.params, run.data.metrics
        rows.append({
            "run_id": run.info.run_id,
            "run_name": run.info.run_name,
            "status": run.info.status,
            "start_time": datetime.fromtimestamp(run.info.start_time / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S"),
            "pipeline": params.get("pipeline"),
            "optimizer": params.get("optimizer"),
            "lm": params.get("lm.model"),
            "baseline_score": metrics.get("baseline.score"),
            "compiled_score": metrics.get("compiled.score"),
            "lm_calls": metrics.get("lm_calls"),
            "cost_usd": metrics.get("cost.usd"),  # None: unknown (see cost_unpriced) or not recorded
            "cost_unpriced": params.get("cost.unpriced"),
            "killed_reason": run.data.tags.get(KILLED_REASON_TAG),
            "resumed_from": run.data.tags.get("pipec.resumed_from"),
        })
    return rows


def _artifact_paths(client: Any, run_id: str, path: str | None = None) -> list[str]:
    found = []
    for item in client.list_artifacts(run_id, path):
        found += _artifact_paths(client, run_id, item.path) if item.is_dir else [item.path]
    return found


def _scores(metrics: dict[str, float]) -> dict[str, dict[str, Any]]:
    """``{stage: {"score": ..., "nodes": {node: score}}}`` from ``<stage>.score`` and
    ``<stage>.node.<node>.score`` metrics."""
    stages: dict[str, dict[str, Any]] = {}
    for key, value in metrics.items():
        stage, _, rest = key.partition(".")
        if rest == "score":
            stages.setdefault(stage, {"score": None, "nodes": {}})["score"] = value
        elif rest.startswith("node.") and rest.endswith(".score") and rest.count(".") == 2:
            stages.setdefault(stage, {"score": None, "nodes": {}})["nodes"][rest.split(".")[1]] = value
    return {stage: entry for stage, entry in stages.items() if entry["score"] is not None}


def show_run(run_id: str) -> dict[str, Any]:
    """One run in full: its settings, scores per stage and node, cost per phase, datasets,
    registered prompts, logged models, and artifacts.

    Raises:
        TrackingStoreError: The tracking URI names a store that cannot be opened.
        ConfigError: No such run.
    """
    import json

    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from experiments.liveness import check_tracking_uri

    client = MlflowClient(check_tracking_uri())
    try:
        run = client.get_run(run_id)
    except MlflowException as exc:
        raise ConfigError(f"no MLflow run {run_id!r}; see the run ids with `pipec runs list`") from exc
    params, metrics, tags = run.data.params, run.data.metrics, run.data.tags
    datasets = [{"name": d.dataset.name, "digest": d.dataset.digest, "source": d.dataset.source,
                 "context": next((t.value for t in d.tags if t.key == "mlflow.data.context"), None)}
                for d in (run.inputs.dataset_inputs if run.inputs else [])]
    try:
        prompts = json.loads(tags.get("mlflow.linkedPrompts") or "[]")
    except ValueError:
        prompts = []
    try:
        models = [{"model_id": m.model_id, "name": m.name, "uri": f"models:/{m.model_id}"}
                  for m in client.search_logged_models(experiment_ids=[run.info.experiment_id],
                                                       filter_string=f"source_run_id = '{run_id}'")]
    except MlflowException:
        models = []
    phases = {key[: -len(".cost.usd")]: value for key, value in metrics.items() if key.endswith(".cost.usd")}
    return {
        "run_id": run.info.run_id,
        "run_name": run.info.run_name,
        "experiment_id": run.info.experiment_id,
        "kind": tags.get("pipec.kind"),
        "status": run.info.status,
        "start_time": datetime.fromtimestamp(run.info.start_time / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S"),
        "end_time": (datetime.fromtimestamp(run.info.end_time / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")
                     if run.info.end_time else None),
        "pipeline": params.get("pipeline"),
        "optimizer": params.get("optimizer"),
        "lm": params.get("lm.model"),
        "scores": _scores(metrics),
        "cost": {"usd": metrics.get("cost.usd"), "phases": phases, "unpriced": params.get("cost.unpriced")},
        "params": dict(sorted(params.items())),
        "metrics": dict(sorted(metrics.items())),
        "datasets": datasets,
        "prompts": prompts,
        "models": models,
        "artifacts": sorted(_artifact_paths(client, run_id)),
    }
