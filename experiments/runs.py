"""Reading tracked runs back from MLflow."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from programs.errors import ConfigError

__all__ = ["list_runs"]


def list_runs(experiment: str, limit: int = 20) -> list[dict[str, Any]]:
    """The experiment's compile runs, newest first, as plain dicts."""
    from mlflow.tracking import MlflowClient

    from experiments.liveness import KILLED_REASON_TAG, mark_killed_runs

    client = MlflowClient()
    mark_killed_runs("pipec runs list", client)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        known = [e.name for e in client.search_experiments()]
        raise ConfigError(f"no MLflow experiment {experiment!r}; experiments: {', '.join(known) or 'none'}")
    runs = client.search_runs([found.experiment_id], filter_string="tags.`pipec.kind` = 'compile'",
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
            "killed_reason": run.data.tags.get(KILLED_REASON_TAG),
            "resumed_from": run.data.tags.get("pipec.resumed_from"),
        })
    return rows
