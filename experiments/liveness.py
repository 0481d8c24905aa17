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
"""

from __future__ import annotations

import os
import socket
import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

__all__ = ["KILLED_REASON_TAG", "mark_killed_runs", "process_alive", "process_start", "process_tags"]

KILLED_REASON_TAG = "pipec.killed_reason"
HOST_TAG, PID_TAG, PID_START_TAG, BOOT_TAG = "pipec.host", "pipec.pid", "pipec.pid_start", "pipec.boot_id"


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

    Call it from every command that opens the tracking store. Tracking is telemetry: a store
    that cannot be read or written here is a warning, never an error.

    Args:
        command: The command doing it, for the reason tag (``pipec runs list``).
        client: An ``MlflowClient``; one for the current tracking URI by default.

    Returns:
        The ids of the runs marked KILLED.
    """
    from mlflow.entities import RunStatus, ViewType
    from mlflow.tracking import MlflowClient

    host = socket.gethostname()
    marked: list[str] = []
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
