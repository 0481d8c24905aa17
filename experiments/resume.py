"""``pipec compile --resume RUN_ID``: the same compile again, from what the run recorded.

A compile run records the request it was given (the ``options.*`` params: pipeline, optimizer,
``--param`` values, LM, seed, threads, dataset paths) beside the datasets' content hashes. Resuming
reads them back, checks that every dataset still hashes the same (a ``store:`` trainset: that the
flywheel store still yields the same rows, by count and content hash), and runs the same compile with
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


def _same_store_rows(kind: str, spec: str, params: Mapping[str, str], pipeline: Any, pipeline_name: str,
                     run_id: str) -> dict[str, str]:
    """Checks that the flywheel store still yields the rows run ``run_id`` trained on (count and
    sha256, as the run recorded them); returns the options that read exactly those rows again: the
    store file the run read and the spec with its pipeline filter spelled out.

    Raises:
        DatasetError: The store is gone, or its rows for ``spec`` changed.
        ConfigError: The run does not record which store rows it used.
    """
    from experiments.datasets import load_dataset
    from experiments.store import parse_store_spec
    from programs.errors import ConfigError, DatasetError

    store, rows, digest = (params.get(f"{kind}.store.state.path"), params.get(f"{kind}.store.rows"),
                           params.get(f"{kind}.sha256"))
    if not (store and rows and digest):
        raise ConfigError(f"--resume {run_id}: the run does not record which store rows its {kind} {spec} used; "
                          "start a new compile with the same flags")
    if not Path(store).is_file():
        raise DatasetError(f"the flywheel store of run {run_id} is gone; restore it to resume, or start a new "
                           "compile", path=store)
    found = parse_store_spec(spec)
    found.pipeline = found.pipeline or params.get(f"{kind}.store.filter.pipeline") or pipeline_name
    same = "store:" + ",".join((["approved"] if found.approved else [])
                               + [f"{key}={value}" for key, value in (("node", found.node),
                                                                      ("pipeline", found.pipeline)) if value])
    where = f"{store}#{spec}"
    try:
        now = load_dataset(same, pipeline, store=store)
    except DatasetError as exc:  # no rows any more, or rows the pipeline cannot take
        changed = f"none that load: {exc}"
    else:
        changed = None if (len(now), now.digest) == (int(rows), digest) else \
            f"{len(now)} rows, sha256 {now.digest[:12]}"
    if changed is not None:
        raise DatasetError(f"the {kind} rows changed since run {run_id} (then {rows} rows, sha256 {digest[:12]}; "
                           f"now {changed}): resume trains on the same rows; start a new compile to train on the "
                           "store as it is", path=where)
    return {kind: same, "store": store}


def resume_options(run_id: str, overrides: Mapping[str, Any] | None = None) -> Any:
    """The ``CompileOptions`` that re-run compile run ``run_id``, its datasets checked unchanged.

    Args:
        run_id: The MLflow run to resume (any status: a killed, failed or finished compile).
        overrides: Options to set on top (``out``, ``progress``).

    Raises:
        TrackingStoreError: The tracking URI names a store that cannot be opened.
        ConfigError: No such run, not a compile run, or one recorded without its options.
        DatasetError: A dataset is missing or its content hash differs from the recorded one; a
            ``store:`` trainset's store is gone or yields other rows (count or content hash).
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
    same_rows: dict[str, str] = {}
    for kind in ("trainset", "valset"):
        value = options.get(kind)
        if isinstance(value, str) and value.startswith("store:"):  # the flywheel store: its rows, not a file
            same_rows.update(_same_store_rows(kind, value, params, pipeline, options["pipeline"], run_id))
        else:
            path = value or (params.get("trainset.path") if kind == "trainset" else None)
            _check_dataset(kind, path, params.get(f"{kind}.sha256"), pipeline, run_id)
    extra_tags = {RESUMED_FROM_TAG: run_id}
    if tags.get("pipec.demo"):
        extra_tags["pipec.demo"] = tags["pipec.demo"]
    known = {f.name for f in dataclasses.fields(CompileOptions)} - set(_NOT_RECORDED)
    recorded = {k: v for k, v in options.items() if k in known}
    recorded["params"] = tuple(recorded.get("params") or ())
    return CompileOptions(**{**recorded, **same_rows, "extra_tags": extra_tags, **dict(overrides or {})})
