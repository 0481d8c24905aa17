import os
import socket
import subprocess
import sys

from mlflow.tracking import MlflowClient

from experiments.liveness import (
    KILLED_REASON_TAG,
    mark_killed_runs,
    process_alive,
    process_start,
    process_tags,
)


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_this_process_is_alive_and_a_finished_one_is_not():
    tags = process_tags()
    assert tags["pipec.host"] == socket.gethostname() and tags["pipec.pid"] == str(os.getpid())
    start = process_start(os.getpid())
    assert start is not None and start.isdigit() and tags["pipec.pid_start"] == start
    assert process_alive(os.getpid(), start, tags.get("pipec.boot_id"))
    assert not process_alive(_dead_pid())


def test_a_reused_pid_or_a_reboot_is_not_the_run_s_process():
    start = process_start(os.getpid())
    # The same pid with another start time: the system gave the pid to a new process.
    assert not process_alive(os.getpid(), str(int(start) + 1))
    assert not process_alive(os.getpid(), start, boot_id="00000000-0000-0000-0000-000000000000")


def _running_run(client: MlflowClient, experiment_id: str, tags: dict[str, str]) -> str:
    return client.create_run(experiment_id, tags={"pipec.kind": "compile", **tags}).info.run_id


def test_mark_killed_runs_ends_only_this_host_s_runs_whose_process_is_gone():
    client = MlflowClient()
    experiment_id = client.create_experiment("liveness")
    host = socket.gethostname()
    dead = _running_run(client, experiment_id, {"pipec.host": host, "pipec.pid": str(_dead_pid())})
    alive = _running_run(client, experiment_id, process_tags())
    elsewhere = _running_run(client, experiment_id, {"pipec.host": f"not-{host}", "pipec.pid": str(_dead_pid())})
    untagged = _running_run(client, experiment_id, {})

    assert mark_killed_runs("pipec runs list") == [dead]

    killed = client.get_run(dead)
    assert killed.info.status == "KILLED" and killed.info.end_time is not None
    reason = killed.data.tags[KILLED_REASON_TAG]
    assert f"on host {host} is gone" in reason and "found by pipec runs list at " in reason
    for run_id in (alive, elsewhere, untagged):
        run = client.get_run(run_id)
        assert run.info.status == "RUNNING" and KILLED_REASON_TAG not in run.data.tags
    assert mark_killed_runs("pipec runs list") == []  # already ended: nothing to do twice


def test_an_unreadable_store_is_a_warning_not_an_error(tmp_path, monkeypatch):
    import pytest

    (tmp_path / "store").mkdir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'store'}")  # a directory: not a database
    with pytest.warns(RuntimeWarning, match="checking for killed runs failed"):
        assert mark_killed_runs("pipec runs list") == []
