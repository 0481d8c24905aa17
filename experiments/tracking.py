"""MLflow tracking of compile and evaluate runs.

The store is ``$MLFLOW_TRACKING_URI`` when set, else MLflow's own default (``sqlite:///mlflow.db``
in the working directory), the same store ``mlflow ui`` and ``pipec ui`` read. Telemetry never
breaks the user's job: a failure to log is a warning. A run always ends: FINISHED on success,
FAILED on error, KILLED on interrupt, never left RUNNING.
"""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["DEFAULT_EXPERIMENT", "RunTracker", "code_version", "failure_tags", "flatten", "start_writer",
           "tracking_uri"]

logger = logging.getLogger(__name__)

DEFAULT_EXPERIMENT = "pipec"
# Side writes of a compile: the prompts, the logged model and the traces, all three at once.
SIDE_WRITERS = 3
_MAX_PARAM = 6000  # MLflow's limit on a param value's length


def tracking_uri() -> str:
    """The tracking URI in force (MLflow resolves the environment and its default)."""
    import mlflow

    return mlflow.get_tracking_uri()


def flatten(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _param_value(value: Any) -> str:
    model = getattr(value, "model", None)
    if model is not None and hasattr(value, "kwargs"):  # an LM object: record which model
        value = model
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= _MAX_PARAM else text[: _MAX_PARAM - 15] + "...[truncated]"


def code_version(path: str | os.PathLike | None = None) -> dict[str, str]:
    """Git commit and dirty state of the repository holding ``path`` (cwd by default), if any."""
    cwd = str(Path(path).parent if path and Path(path).is_file() else (path or os.getcwd()))
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True,
                                timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=5, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"git.commit": commit, "git.dirty": str(bool(dirty)).lower()} if commit else {}


def failure_tags(exc: BaseException) -> dict[str, str]:
    """Why a run FAILED, as tags: ``pipec.failure`` (one line, no secrets) and ``pipec.failure.reason``
    (a short name: ``lm_auth``, ``lm_unreachable``... for LM errors, else the exception's type)."""
    from experiments.lm_errors import one_line

    reason = getattr(exc, "reason", None)
    return {"pipec.failure": one_line(f"{type(exc).__name__}: {exc}", limit=1000),
            "pipec.failure.reason": reason if isinstance(reason, str) else type(exc).__name__}


def start_writer() -> None:
    """Starts the trackers' writer process now, so its start-up overlaps the caller's own work
    (loading data and LMs) instead of delaying the run's first writes. Best-effort."""
    from experiments.tracking_writer import shared_process

    try:
        shared_process()
    except OSError:
        pass  # RunTracker.start says so, and writes from this process


class RunTracker:
    """One MLflow run; every logging call is best-effort and written in the background.

    Use :meth:`start` as a context manager; inside it, ``run_id`` is set when tracking works.
    Logging calls queue their write and return at once: one writer thread sends them to the
    store in order, so a compile never waits on the store (a sqlite commit costs milliseconds
    to tens of milliseconds of fsync) while it has LM work to do. Leaving :meth:`start` waits
    for every queued write, then ends the run; a write that failed is a warning then.

    The writes' client calls run in a process of their own (``experiments.tracking_writer``):
    the store's SQLAlchemy CPU, seconds per compile, would otherwise compete with the compile
    for this process's interpreter lock. ``in_process=True`` keeps the client here.
    """

    def __init__(self, experiment: str = DEFAULT_EXPERIMENT, run_name: str | None = None,
                 tags: Mapping[str, str] | None = None, *, in_process: bool = False) -> None:
        self.experiment = experiment
        self.in_process = in_process
        self.run_name = run_name
        self.tags = dict(tags or {})
        self.run_id: str | None = None
        self.experiment_id: str | None = None
        self._writer: ThreadPoolExecutor | None = None
        # Independent writes that mostly wait (on MLflow's trace export, on the store's commits),
        # beside the writer and beside each other.
        self._side: ThreadPoolExecutor | None = None
        self._pending: list[Future] = []
        self._failures: list[tuple[str, BaseException]] = []
        self._client: Any = None
        self._batch_lock = threading.Lock()
        self._batch: tuple[list[Any], list[Any], list[Any]] = ([], [], [])  # metrics, params, tags
        self._batch_queued = False
        self._params: dict[str, str] = {}  # every param queued so far, the last value per key

    def _warn(self, what: str, exc: BaseException) -> None:
        warnings.warn(f"MLflow tracking: {what} failed ({type(exc).__name__}: {exc}); the job continues",
                      RuntimeWarning, stacklevel=3)

    @contextmanager
    def start(self) -> Iterator[RunTracker]:
        import mlflow

        from experiments.liveness import TrackingStoreError, mark_killed_runs, process_tags

        try:
            mark_killed_runs(f"pipec {self.tags.get('pipec.kind', 'run')}")
            mlflow.set_experiment(self.experiment)
            # The process owning the run, so a later command can tell when it is gone (KILLED).
            run = mlflow.start_run(run_name=self.run_name, tags={**process_tags(), **self.tags})
            self.run_id, self.experiment_id = run.info.run_id, run.info.experiment_id
            self._client = self._open_client(mlflow.get_tracking_uri(), mlflow.get_registry_uri())
        except TrackingStoreError:  # a mistyped tracking URI: one line and exit 2, not a job without its run
            raise
        except Exception as exc:
            self._warn("starting a run", exc)
            yield self
            return
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pipec-tracking")
        self._side = ThreadPoolExecutor(max_workers=SIDE_WRITERS, thread_name_prefix="pipec-tracking-side")
        status = "FAILED"
        try:
            yield self
            status = "FINISHED"
        except KeyboardInterrupt:
            status = "KILLED"
            raise
        except Exception as exc:  # the reason the run FAILED, on the run itself
            tags = failure_tags(exc)
            self.submit("tagging the failure", lambda client, run_id: [client.set_tag(run_id, k, v)
                                                                       for k, v in tags.items()])
            raise
        finally:
            self.flush()
            self._writer.shutdown(wait=True)
            self._side.shutdown(wait=True)
            self._writer = self._side = None
            try:
                # End every run this thread opened on top of ours (a caller's nested runs), then ours.
                while (active := mlflow.active_run()) is not None and active.info.run_id != self.run_id:
                    mlflow.end_run(status=status)
                mlflow.end_run(status=status)
            except Exception as exc:
                self._warn("ending the run", exc)

    def _open_client(self, tracking_uri: str, registry_uri: str | None) -> Any:
        """The client the writes use: in the writer process (``experiments.tracking_writer``), or
        in this process when that one cannot start."""
        from mlflow.tracking import MlflowClient

        from experiments.tracking_writer import RemoteClient, shared_process

        if self.in_process or ":memory:" in tracking_uri:  # a store only this process can see
            return MlflowClient()
        try:
            return RemoteClient(shared_process(), tracking_uri, registry_uri)
        except OSError as exc:
            self._warn("starting the writer process", exc)
            return MlflowClient()

    def submit(self, what: str, write: Callable[[Any, str], None], *, side: bool = False) -> None:
        """Queues ``write(client, run_id)`` (an ``MlflowClient`` and this run's id) for the writer.

        The client is usually ``experiments.tracking_writer.RemoteClient``: its calls run in the
        writer process, so their arguments must pickle and name files by absolute paths, and
        a write that needs MLflow's live objects (trace spans) runs whole there, through
        ``experiments.tracking_writer.call_with``.

        Args:
            what: What the write does, for the warning if it fails ("logging metrics").
            write: The write; it runs on the writer thread, after every write queued before it.
            side: Run it on a side thread instead, beside the writer's queue and beside the
                other side writes (up to :data:`SIDE_WRITERS` at once, in no set order): for a
                write that depends on no other and spends its time waiting (MLflow's trace export,
                the store's commits), so the waiting does not hold up the writes behind it.
        """
        if self.run_id is None or self._writer is None:
            return
        client, run_id = self._client, self.run_id

        def run() -> None:
            try:
                write(client, run_id)
            except Exception as exc:
                self._failures.append((what, exc))

        self._pending.append((self._side if side and self._side is not None else self._writer).submit(run))

    def flush(self) -> None:
        """Waits for every queued write; each one that failed becomes a warning, here."""
        pending, self._pending = self._pending, []
        for future in pending:
            future.result()
        failures, self._failures = self._failures, []
        for what, exc in failures:
            self._warn(what, exc)

    def log_batch(self, metrics: Sequence[Any] = (), params: Sequence[Any] = (), tags: Sequence[Any] = ()) -> None:
        """Queues MLflow ``Metric``/``Param``/``RunTag`` entities for this run, written in few batches.

        Entities queued while the writer is busy with other writes join one pending batch, written
        by one ``log_batch`` (one store commit) when the writer gets to it: a compile's dozens of
        metrics and params calls cost a handful of commits, not one each.
        """
        if self.run_id is None or self._writer is None:
            return
        with self._batch_lock:
            self._batch[0].extend(metrics)
            self._batch[1].extend(params)
            self._params.update((p.key, p.value) for p in params)
            self._batch[2].extend(tags)
            if self._batch_queued:
                return
            self._batch_queued = True
        self.submit("logging metrics and params", self._write_batch)

    def _write_batch(self, client: Any, run_id: str) -> None:
        with self._batch_lock:
            (metrics, params, tags), self._batch = self._batch, ([], [], [])
            self._batch_queued = False
        # One value per param and tag key (the last), one entry per metric point.
        params = list({p.key: p for p in params}.values())
        tags = list({t.key: t for t in tags}.values())
        metrics = list({(m.key, m.step, m.timestamp, m.value): m for m in metrics}.values())
        if metrics or params or tags:
            client.log_batch(run_id, metrics=metrics, params=params, tags=tags)

    def queued_params(self) -> dict[str, str]:
        """The params queued for this run so far (written or not yet), the last value per key.

        A side write must not read them back from the run: the writer may not have written them.
        """
        with self._batch_lock:
            return dict(self._params)

    def params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        self.log_batch(params=[Param(k, _param_value(v)) for k, v in flatten(params).items()])

    def metrics(self, metrics: Mapping[str, Any], step: int = 0) -> None:
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        self.log_batch(metrics=[Metric(k, float(v), stamp, step) for k, v in flatten(metrics).items()
                                if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)])

    def text(self, text: str, artifact_file: str) -> None:
        """Logs ``text`` (UTF-8) as the artifact ``artifact_file``."""
        self.submit(f"logging artifact {artifact_file}",
                    lambda client, run_id: client.log_text(run_id, text, artifact_file))

    def file(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        """Logs the file at ``path`` (it must stay there until the run ends)."""
        path = os.path.abspath(path)  # the writer process has a working directory of its own
        self.submit(f"logging artifact {path}",
                    lambda client, run_id: client.log_artifact(run_id, path, artifact_path))
