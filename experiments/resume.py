"""``pipec compile --resume RUN_ID``: the same compile again, from what the run recorded.

A compile run records the request it was given (the ``options.*`` params: pipeline, optimizer,
``--param`` values, LM, seed, threads, dataset paths) beside the datasets' content hashes. Resuming
reads them back, checks that every dataset still hashes the same, and runs the same compile with
the same seed as a new run tagged ``pipec.resumed_from``. DSPy's response cache (on by default,
on disk) answers every LM call the first run completed, so those are not paid again; only the
calls that were in flight when the run died, and the ones it never reached, go to the LM.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["RESUMED_FROM_TAG", "recorded_options", "resume_options"]

RESUMED_FROM_TAG = "pipec.resumed_from"
OPTIONS_PARAM = "options"


def _absolute_pipeline(spec: str) -> str:
    file_part, sep, name = spec.rpartition(":")
    if sep and Path(file_part).expanduser().is_file():
        return f"{Path(file_part).expanduser().resolve()}:{name}"
    return spec


_NOT_RECORDED = ("out", "progress", "extra_tags")  # where this compile's outputs go, not what it compiles


def recorded_options(opts: Any) -> str:
    """The compile request as the run records it: every ``CompileOptions`` field but the output
    path, as JSON (paths made absolute; an LM object as its model name; no secrets: keys come
    from the environment and are not options).

    Args:
        opts: The ``experiments.compile.CompileOptions``.
    """
    from dataclasses import fields

    record: dict[str, Any] = {}
    for field in fields(opts):
        if field.name in _NOT_RECORDED:
            continue
        value = getattr(opts, field.name)
        if hasattr(value, "settings") and hasattr(value, "lm"):  # an LMConfig
            value = value.settings.get("model")
        elif isinstance(value, tuple | list):
            value = list(value)
        elif not (value is None or isinstance(value, str | int | float | bool)):
            value = str(value)
        record[field.name] = value
    record["pipeline"] = _absolute_pipeline(opts.pipeline)
    for name in ("trainset", "valset"):
        value = record.get(name)
        if isinstance(value, str) and Path(value).is_file():
            record[name] = str(Path(value).resolve())
    record["lm"] = record.get("lm") or os.environ.get("PIPEC_LM") or "local"
    return json.dumps(record, ensure_ascii=False)


def _check_dataset(kind: str, path: str | None, recorded: str | None, pipeline: Any, run_id: str) -> None:
    from experiments.datasets import load_dataset
    from programs.errors import DatasetError

    if not path or not recorded:
        return
    if not Path(path).is_file():
        raise DatasetError(f"the {kind} of run {run_id} is gone; restore it to resume, or start a new compile",
                           path=path)
    digest = load_dataset(path, pipeline).digest
    if digest != recorded:
        raise DatasetError(f"the {kind} changed since run {run_id} (sha256 {recorded[:12]}, now {digest[:12]}); "
                           "restore it to resume, or start a new compile", path=path)


def resume_options(run_id: str, overrides: Mapping[str, Any] | None = None) -> Any:
    """The ``CompileOptions`` that re-run compile run ``run_id``, its datasets checked unchanged.

    Args:
        run_id: The MLflow run to resume (any status: a killed, failed or finished compile).
        overrides: Options to set on top (``out``, ``progress``).

    Raises:
        TrackingStoreError: The tracking URI names a store that cannot be opened.
        ConfigError: No such run, not a compile run, or one recorded without its options.
        DatasetError: A dataset is missing or its content hash differs from the recorded one.
    """
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from experiments.compile import CompileOptions
    from experiments.liveness import check_tracking_uri
    from experiments.tracking import tracking_uri
    from programs.errors import ConfigError
    from programs.loader import make_pipeline

    try:
        run = MlflowClient(check_tracking_uri()).get_run(run_id)
    except MlflowException as exc:
        raise ConfigError(f"--resume {run_id}: no such run in {tracking_uri()}; see `pipec runs list`") from exc
    params, tags = run.data.params, run.data.tags
    if tags.get("pipec.kind") != "compile":
        raise ConfigError(f"--resume {run_id}: not a compile run (pipec.kind={tags.get('pipec.kind')!r})")
    if OPTIONS_PARAM not in params:
        raise ConfigError(f"--resume {run_id}: the run does not record its compile options (an older pipec); "
                          "start a new compile with the same flags")
    options = json.loads(params[OPTIONS_PARAM])
    pipeline = make_pipeline(options["pipeline"])
    trainset = options.get("trainset")
    if not (isinstance(trainset, str) and trainset.startswith("store:")):  # the flywheel store: no file to hash
        _check_dataset("trainset", trainset or params.get("trainset.path"), params.get("trainset.sha256"), pipeline,
                       run_id)
    _check_dataset("valset", options.get("valset"), params.get("valset.sha256"), pipeline, run_id)
    extra_tags = {RESUMED_FROM_TAG: run_id}
    if tags.get("pipec.demo"):
        extra_tags["pipec.demo"] = tags["pipec.demo"]
    known = {f.name for f in dataclasses.fields(CompileOptions)} - set(_NOT_RECORDED)
    recorded = {k: v for k, v in options.items() if k in known}
    recorded["params"] = tuple(recorded.get("params") or ())
    return CompileOptions(**recorded, extra_tags=extra_tags, **dict(overrides or {}))
