import os
import socket
import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

from experiments.liveness import (
    KILLED_REASON_TAG,
    TrackingStoreError,
    check_tracking_uri,
    mark_killed_runs,
    process_alive,
    process_start,
    process_tags,
)
from tests.http_server import free_port
from tests.killing import SLOW_PIPELINE, TRIAGE


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


def _bad_uris(tmp_path):
    """Mistyped tracking URIs, one of each kind, and a word of the fix each error line must give."""
    (tmp_path / "store").mkdir()
    (tmp_path / "notes.txt").write_text("ノート: not a database\n", encoding="utf-8")
    return {
        "a directory": (f"sqlite:///{tmp_path / 'store'}", f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"),
        "not a database": (f"sqlite:///{tmp_path / 'notes.txt'}", "is not an SQLite database"),
        "a missing directory": (f"sqlite:///{tmp_path / 'no' / 'such' / 'mlflow.db'}",
                                f"mkdir -p {tmp_path / 'no' / 'such'}"),
        "a file as a directory": (f"sqlite:///{tmp_path / 'notes.txt' / 'mlflow.db'}", "is a file, not a directory"),
        "a directory that does not exist": (f"sqlite:///{tmp_path / 'runs'}/",
                                            "names a directory, not a database file"),
        "nothing listens": (f"http://127.0.0.1:{free_port()}", "nothing listens there"),
        "a database server nothing listens on": (f"postgresql://pipec:hunter2@127.0.0.1:{free_port()}/runs",
                                                 "start the postgresql server"),
        "the file store": (str(tmp_path / "mlruns"), "use a database such as sqlite:///"),
        "an unknown scheme": (f"sqlit:///{tmp_path / 'mlflow.db'}", "unknown scheme 'sqlit'"),
    }


KINDS = ["a directory", "not a database", "a missing directory", "a file as a directory",
         "a directory that does not exist", "nothing listens",
         "a database server nothing listens on", "the file store", "an unknown scheme"]


@pytest.mark.parametrize("kind", KINDS)
def test_a_store_that_cannot_be_opened_is_one_line_naming_the_setting_and_the_fix(tmp_path, monkeypatch, kind):
    uri, fix = _bad_uris(tmp_path)[kind]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(TrackingStoreError) as caught:
        mark_killed_runs("pipec runs list")
    message = str(caught.value)
    assert message.startswith("MLFLOW_TRACKING_URI=") and "\n" not in message
    assert fix in message and "unset it to use sqlite:///mlflow.db" in message
    assert "hunter2" not in message  # a password in the URI is not printed
    assert sorted(tmp_path.rglob("*")) == before  # nothing created: no directory, no database


def test_stores_that_open_pass_the_check(tmp_path, monkeypatch):
    MlflowClient().create_experiment("made")  # the test's store now exists, a real MLflow database
    assert check_tracking_uri().startswith("sqlite:///")
    (tmp_path / "empty.db").touch()  # sqlite takes an empty file for a new database
    for uri in (f"sqlite:///{tmp_path / 'new.db'}", f"sqlite:///{tmp_path / 'empty.db'}", "sqlite:///relative.db",
                "sqlite://", "databricks"):
        assert check_tracking_uri(uri) == uri
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow's own opt-in keeps the file store
    assert check_tracking_uri(str(tmp_path / "mlruns")) == str(tmp_path / "mlruns")


def test_a_tracking_server_that_listens_passes_the_check():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        uri = f"http://127.0.0.1:{server.getsockname()[1]}"
        assert check_tracking_uri(uri) == uri


COMMANDS = {  # each command that opens the tracking store, each against another kind of bad URI
    "a directory": ("compile", SLOW_PIPELINE, "--trainset", str(TRIAGE), "-o", "bootstrap-rs", "--out", "program.json"),
    "not a database": ("runs", "list"),
    "a missing directory": ("runs", "show", "0123456789abcdef"),
    "nothing listens": ("compile", "--resume", "0123456789abcdef", "--out", "program.json"),
    "a file as a directory": ("runs", "compare", "0123456789abcdef", "fedcba9876543210"),
    "a directory that does not exist": ("ui", "--port", "0"),
    "an unknown scheme": ("compile", SLOW_PIPELINE, "--trainset", str(TRIAGE), "-o", "labeled", "--no-preflight",
                          "--out", "program.json"),
}


@pytest.mark.parametrize("kind", list(COMMANDS))
def test_pipec_commands_exit_2_on_a_mistyped_tracking_uri(tmp_path, kind):
    uri, fix = _bad_uris(tmp_path)[kind]
    done = subprocess.run([sys.executable, "-m", "experiments", *COMMANDS[kind]], capture_output=True, text=True,
                          env={**os.environ, "MLFLOW_TRACKING_URI": uri}, cwd=tmp_path, timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    [line] = [line for line in done.stderr.splitlines() if "Error" in line or "Traceback" in line]
    assert line.startswith(f"Error: MLFLOW_TRACKING_URI={uri}: ") and fix in line
    assert not (tmp_path / "program.json").exists()
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "store" / "mlflow.db").exists()
