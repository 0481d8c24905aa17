"""The tracker's writer process: calls run there, their results and errors come back, and it
never outlives the process it serves."""

import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time

import mlflow
import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from experiments.tracking import RunTracker
from experiments.tracking_writer import RemoteClient, WriterGoneError, WriterProcess, absolute_uri, shared_process


def _pid_and_cwd(client, label):
    return os.getpid(), os.getcwd(), label, client.tracking_uri


def test_calls_run_in_the_writer_process_and_their_results_and_errors_come_back(tmp_path):
    uri = mlflow.get_tracking_uri()
    client = RemoteClient(shared_process(), uri)
    experiment = client.create_experiment("日本語の実験")
    run = client.create_run(experiment, run_name="ラン")
    client.log_param(run.info.run_id, "ラベル", "請求")
    assert MlflowClient().get_run(run.info.run_id).data.params == {"ラベル": "請求"}
    pid, _, label, seen_uri = client.call(_pid_and_cwd, "見出し")
    assert pid == shared_process().pid != os.getpid() and label == "見出し" and seen_uri == absolute_uri(uri)
    with pytest.raises(MlflowException, match="no-such-run"):  # MLflow's own error, as itself
        client.get_run("no-such-run")


def test_relative_store_paths_are_resolved_where_the_caller_stands(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert absolute_uri("sqlite:///mlflow.db") == f"sqlite:///{tmp_path}/mlflow.db"
    assert absolute_uri("sqlite:////abs/m.db") == "sqlite:////abs/m.db"
    assert absolute_uri("mlruns") == str(tmp_path / "mlruns")
    assert absolute_uri("file:mlruns") == f"file://{tmp_path}/mlruns"
    for unchanged in ("http://127.0.0.1:5000", "databricks", "postgresql://u@h/db", None):
        assert absolute_uri(unchanged) == unchanged
    # A run tracked from here, its file artifact named by a relative path, is whole.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db")
    (tmp_path / "notes.txt").write_text("メモ", encoding="utf-8")
    tracker = RunTracker("relative")
    with tracker.start():
        tracker.file("notes.txt")
    path = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").download_artifacts(tracker.run_id, "notes.txt")
    assert open(path, encoding="utf-8").read() == "メモ"


def test_a_dead_writer_fails_its_calls_and_the_next_tracker_gets_a_new_one():
    process = WriterProcess()
    client = RemoteClient(process, mlflow.get_tracking_uri())
    assert client.search_experiments()  # it answers
    os.kill(process.pid, signal.SIGKILL)
    with pytest.raises(WriterGoneError):
        for _ in range(100):  # until the reply pipe's end is seen
            client.search_experiments()
            time.sleep(0.05)
    assert not process.alive
    process.close()
    tracker = RunTracker("after")
    with tracker.start():
        tracker.params({"k": "v"})
    assert MlflowClient().get_run(tracker.run_id).data.params == {"k": "v"}


def test_the_writer_process_ends_when_the_process_it_serves_is_killed(tmp_path):
    code = textwrap.dedent("""
        import sys
        from experiments.tracking_writer import shared_process
        print(shared_process().pid, flush=True)
        sys.stdin.read()
    """)
    parent = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    writer = int(parent.stdout.readline())
    os.kill(writer, 0)  # running
    parent.kill()
    parent.wait()
    for _ in range(600):
        try:
            os.kill(writer, 0)
        except ProcessLookupError:
            break
        # Not our child: it is reaped by init once it exits; a zombie still answers kill(0).
        with open(f"/proc/{writer}/stat", encoding="utf-8") as stat:
            if stat.read().split()[2] == "Z":
                break
        time.sleep(0.05)
    else:
        pytest.fail("the writer process outlived the process it served")


def test_calls_that_go_through_mlflows_global_uri_reach_their_own_store(tmp_path):
    # Linking a prompt version to a run reads MLflow's global tracking URI: each call gets its own.
    for name in ("a", "b", "a"):
        uri = f"sqlite:///{tmp_path}/{name}.db"
        local = MlflowClient(uri)
        experiment = local.get_experiment_by_name("e") or local.get_experiment(local.create_experiment("e"))
        run = local.create_run(experiment.experiment_id)
        remote = RemoteClient(shared_process(), uri)
        version = remote.register_prompt(name=f"p-{name}", template="こんにちは {{x}}")
        remote.link_prompt_version_to_run(run.info.run_id, version)
        assert f"p-{name}" in local.get_run(run.info.run_id).data.tags["mlflow.linkedPrompts"]


class _PickyError(Exception):
    def __init__(self, what, where):  # two arguments: pickle cannot rebuild it from its args
        super().__init__(f"{what} at {where}")


def _raise_picky(client):
    raise _PickyError("壊れた", "書き込み")


def _unpicklable_result(client):
    return lambda: None


def test_errors_and_results_that_cannot_cross_the_pipe_fail_their_call_only():
    from experiments.tracking_writer import RemoteError

    client = RemoteClient(shared_process(), mlflow.get_tracking_uri())
    with pytest.raises(RemoteError, match="_PickyError: 壊れた at 書き込み"):
        client.call(_raise_picky)
    with pytest.raises((AttributeError, pickle.PicklingError), match="pickle"):  # its result: raised there, as itself
        client.call(_unpicklable_result)
    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
        client.call(lambda c: None)  # not sent at all: a lambda does not pickle by name
    assert client.search_experiments()  # the pipe still works
