"""Runs whose process is gone: found and marked KILLED.

A run that ends normally, on an error or on Ctrl-C is ended by its own process (FINISHED, FAILED,
KILLED). A process killed outright (``kill -9``, the OOM killer, a closed laptop) cannot end its
run, which would stay RUNNING forever. So every run records which process owns it, as tags:

    pipec.host        the host name
    pipec.pid         the process id
    pipec.pid_start   the process's start time (clock ticks since boot, /proc/<pid>/stat field 22),
                      so a pid the system has reused for another process is not taken for ours
    pipec.boot_id     the kernel's boot id: after a reboot no process of the run can be alive

and every pipec command that opens the tracking store calls :func:`mark_killed_runs`, which ends
the RUNNING runs of *this host* whose process is gone as KILLED, with a ``pipec.killed_reason``
tag. Runs of other hosts are left alone: from here their processes cannot be checked.

Before that, :func:`check_tracking_uri` looks at the tracking URI itself, without MLflow: a sqlite
path that is a directory or not a database, a directory that does not exist, a server or database
host nothing listens on. MLflow retries such a store for minutes (sqlalchemy's engine ten times
with backoff, HTTP seven times); checked first, a mistyped ``MLFLOW_TRACKING_URI`` is one line
naming it and the fix, in well under a second.
"""

from __future__ import annotations

import os
import socket
import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from programs.errors import StoreError

__all__ = ["KILLED_REASON_TAG", "TrackingStoreError", "check_tracking_uri", "mark_killed_runs", "process_alive",
           "process_start", "process_tags"]

KILLED_REASON_TAG = "pipec.killed_reason"
HOST_TAG, PID_TAG, PID_START_TAG, BOOT_TAG = "pipec.host", "pipec.pid", "pipec.pid_start", "pipec.boot_id"


class TrackingStoreError(StoreError):
    """The MLflow tracking URI names a store that cannot be opened (a user error: exit status 2)."""


_SQLITE_HEADER = b"SQLite format 3\x00"
_DEFAULT_PORTS = {"http": 80, "https": 443, "postgresql": 5432, "mysql": 3306, "mssql": 1433}
_BUILTIN_SCHEMES = {"", "file", "sqlite", "http", "https", "postgresql", "mysql", "mssql", "databricks",
                    "databricks-uc", "uc"}
_UNSET = "unset it to use sqlite:///mlflow.db in the working directory"


def _shown(uri: str) -> str:
    """The URI without its password (``postgresql://user:***@host/db``)."""
    from urllib.parse import urlsplit

    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    host = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=f"{parts.username}:***@{host}").geturl()


def _sqlite_problem(uri: str) -> str | None:
    if not uri.startswith("sqlite:///"):
        return None if uri.split("?")[0] == "sqlite://" else "expected sqlite:///relative/path.db or " \
                                                               "sqlite:////absolute/path.db"
    name = uri.removeprefix("sqlite:///").split("?")[0]
    if not name or name == ":memory:" or name.startswith("file:"):
        return None
    path = Path(name)
    if name.endswith("/") and not path.is_dir():  # sqlite would create a file named like the directory
        return f"{name} names a directory, not a database file; point MLFLOW_TRACKING_URI at a file, such as " \
               f"sqlite:///{path / 'mlflow.db'} (create the directory first), or {_UNSET}"
    if path.is_dir():
        return f"{path} is a directory, not a database file; point MLFLOW_TRACKING_URI at a file in it, " \
               f"such as sqlite:///{path / 'mlflow.db'}, or {_UNSET}"
    if path.exists():
        try:
            with path.open("rb") as file:
                header = file.read(len(_SQLITE_HEADER))
        except OSError as exc:
            return f"{path} cannot be read ({exc.strerror}); fix its permissions, or {_UNSET}"
        if header and header != _SQLITE_HEADER:
            return f"{path} is not an SQLite database; point MLFLOW_TRACKING_URI at a database file (a new " \
                   f"name creates one), or {_UNSET}"
        return None
    parent = path.parent
    ancestor = next((p for p in (parent, *parent.parents) if p.exists()), None)
    if ancestor is not None and not ancestor.is_dir():
        return f"{ancestor} is a file, not a directory; fix MLFLOW_TRACKING_URI, or {_UNSET}"
    if not parent.exists():
        return f"the directory {parent} does not exist; create it (mkdir -p {parent}) or fix " \
               f"MLFLOW_TRACKING_URI, or {_UNSET}"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"{path} cannot be created: the directory {parent} is not writable; fix MLFLOW_TRACKING_URI, " \
               f"or {_UNSET}"
    return None


def _listener_problem(scheme: str, host: str | None, port: int | None, timeout: float) -> str | None:
    """Whether something accepts a TCP connection at the store's host and port."""
    if not host:
        return None  # a local socket or a driver default: the driver says
    port = port or _DEFAULT_PORTS.get(scheme)
    if port is None:
        return None
    what = "start the tracking server (mlflow server --host ... --port ...)" if scheme.startswith("http") \
        else f"start the {scheme} server"
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except socket.gaierror:
        return f"no host named {host!r}; fix MLFLOW_TRACKING_URI, or {_UNSET}"
    except TimeoutError:
        return f"{host}:{port} did not answer within {timeout:g} s; {what} or fix MLFLOW_TRACKING_URI, or {_UNSET}"
    except OSError as exc:
        reason = "nothing listens there" if isinstance(exc, ConnectionRefusedError) else exc.strerror or str(exc)
        return f"cannot connect to {host}:{port} ({reason}); {what} or fix MLFLOW_TRACKING_URI, or {_UNSET}"


def _plugin_schemes() -> set[str]:
    from importlib.metadata import entry_points

    return {entry.name for entry in entry_points(group="mlflow.tracking_store")}


def check_tracking_uri(uri: str | None = None, *, timeout: float = 3.0) -> str:
    """Checks that the tracking store can be opened, without MLflow (which retries for minutes).

    Looks only where a mistyped URI goes wrong: a sqlite path (a directory, a file that is not a
    database, a missing or read-only directory), a server or database host (one TCP connection,
    ``timeout`` seconds), the file store (refused by MLflow 3 unless ``MLFLOW_ALLOW_FILE_STORE``),
    an unknown scheme. A store that passes may still fail later (locked, full): that is telemetry,
    warned about where it happens.

    Args:
        uri: The tracking URI; MLflow's current one (``$MLFLOW_TRACKING_URI``, else its default)
            when None.
        timeout: Seconds to wait for a server's TCP connection.

    Returns:
        The URI checked.

    Raises:
        TrackingStoreError: One line naming the URI, what is wrong and the fix.
    """
    from urllib.parse import urlsplit

    if uri is None:
        import mlflow

        uri = mlflow.get_tracking_uri()
    parts = urlsplit(uri)
    scheme = parts.scheme.lower().split("+")[0]
    if len(scheme) == 1:  # a Windows drive letter: a path
        scheme = ""
    if uri in ("databricks", "databricks-uc", "uc"):  # MLflow's bare names for those stores
        problem = None
    elif scheme == "sqlite":
        problem = _sqlite_problem(uri)
    elif scheme in ("", "file"):
        allowed = os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").strip().lower() in ("1", "true", "yes")
        problem = None if allowed else (
            "a directory (MLflow's file store, which this MLflow refuses); use a database such as "
            f"sqlite:///{Path(parts.path or uri) / 'mlflow.db'}, or {_UNSET}")
    elif scheme in ("http", "https", "postgresql", "mysql", "mssql"):
        try:
            port = parts.port
        except ValueError:
            port, problem = None, f"the port in {parts.netloc!r} is not a number; fix MLFLOW_TRACKING_URI"
        else:
            problem = _listener_problem(scheme, parts.hostname, port, timeout)
    elif scheme in _BUILTIN_SCHEMES or scheme in _plugin_schemes():
        problem = None
    else:
        problem = (f"unknown scheme {parts.scheme!r}; use sqlite:///path/to/mlflow.db, http://host:port (a "
                   f"tracking server) or postgresql://..., or {_UNSET}")
    if problem is not None:
        raise TrackingStoreError(f"MLFLOW_TRACKING_URI={_shown(uri)}: {problem}")
    return uri


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text(encoding="ascii").strip() or None
    except OSError:
        return None


def process_start(pid: int) -> str | None:
    """The start time of process ``pid`` in clock ticks since boot, or None (no such process,
    or no ``/proc`` on this system)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    # Field 2 (the command name) is in parentheses and may hold spaces or ')': split after the last ')'.
    fields = stat[stat.rfind(")") + 2:].split()
    return fields[19] if len(fields) > 19 else None  # field 22 overall; fields[0] is field 3


def process_tags() -> dict[str, str]:
    """The tags naming this process, for a run it starts."""
    tags = {HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid())}
    start, boot = process_start(os.getpid()), _boot_id()
    if start is not None:
        tags[PID_START_TAG] = start
    if boot is not None:
        tags[BOOT_TAG] = boot
    return tags


def process_alive(pid: int, start: str | None = None, boot_id: str | None = None) -> bool:
    """Whether the process ``pid`` that started at ``start`` (in the boot ``boot_id``) still runs.

    Without ``/proc`` only the pid is checked (a signal 0 probe).
    """
    current_boot = _boot_id()
    if boot_id and current_boot and boot_id != current_boot:
        return False  # the machine rebooted since
    if Path("/proc/self/stat").exists():
        now = process_start(pid)
        if now is None:
            return False
        return start is None or now == start
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, owned by someone else
    return True


def _gone(tags: dict[str, str], host: str) -> str | None:
    """Why the run's process is gone, or None when it is alive or not checkable from here."""
    if tags.get(HOST_TAG) != host or not tags.get(PID_TAG, "").isdigit():
        return None
    pid = int(tags[PID_TAG])
    if process_alive(pid, tags.get(PID_START_TAG), tags.get(BOOT_TAG)):
        return None
    return f"process {pid} on host {host} is gone"


def mark_killed_runs(command: str, client: Any = None) -> list[str]:
    """Ends as KILLED every RUNNING run of this host whose process is gone.

    Call it from every command that opens the tracking store. It checks the tracking URI first
    (:func:`check_tracking_uri`): a store that cannot be opened at all is the user's setting to
    fix, an error. Past that, tracking is telemetry: a store that fails to answer is a warning.

    Args:
        command: The command doing it, for the reason tag (``pipec runs list``).
        client: An ``MlflowClient``; one for the current tracking URI by default.

    Returns:
        The ids of the runs marked KILLED.

    Raises:
        TrackingStoreError: The tracking URI names a store that cannot be opened.
    """
    from mlflow.entities import RunStatus, ViewType
    from mlflow.tracking import MlflowClient

    host = socket.gethostname()
    marked: list[str] = []
    check_tracking_uri(getattr(client, "tracking_uri", None))
    try:
        client = client or MlflowClient()
        experiments = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
        if not experiments:
            return marked
        host_literal = host.replace("'", "\\'")
        running = client.search_runs(experiments, run_view_type=ViewType.ALL, max_results=1000,
                                     filter_string=f"attributes.status = 'RUNNING' and tags.`{HOST_TAG}` = "
                                                   f"'{host_literal}'")
        for run in running:
            reason = _gone(run.data.tags, host)
            if reason is None:
                continue
            stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
            client.set_tag(run.info.run_id, KILLED_REASON_TAG, f"{reason} (found by {command} at {stamp})")
            client.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.KILLED))
            marked.append(run.info.run_id)
    except Exception as exc:  # telemetry never breaks the user's command
        warnings.warn(f"MLflow tracking: checking for killed runs failed ({type(exc).__name__}: {exc}); "
                      "the command continues", RuntimeWarning, stacklevel=2)
    return marked
