"""``pipec runs list`` against real ``pipec compile`` processes and a real sqlite store."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from mlflow.tracking import MlflowClient

SLOW_PIPELINE = f"{Path(__file__).resolve().parents[1] / 'slow_pipeline.py'}:SlowTriage"


def pipec(*args, env=None, cwd=None, check=True):
    done = subprocess.run([sys.executable, "-m", "experiments", *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=600)
    assert not check or done.returncode == 0, done.stderr[-3000:]
    return done


def start_compile(tmp_path: Path, *args: str, log: str = "calls.log", cache: str = "dspy-cache",
                  latency: str = "0.05", trainset: str | None = None) -> subprocess.Popen:
    """``pipec compile`` of the slow pipeline in a subprocess, on a DSPy disk cache in ``tmp_path``."""
    env = {**os.environ, "SLOW_LM_LATENCY": latency, "SLOW_LM_LOG": str(tmp_path / log),
           "DSPY_CACHEDIR": str(tmp_path / cache)}
    trainset = trainset or str(Path(__file__).resolve().parents[2] / "programs" / "data" / "triage.jsonl")
    return subprocess.Popen([sys.executable, "-m", "experiments", "compile", SLOW_PIPELINE, "--trainset", trainset,
                             *args, "--json"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(condition, process: subprocess.Popen, what: str):
    """Polls ``condition()`` until it is truthy; fails if ``process`` ends first."""
    while not (found := condition()):
        if process.poll() is not None:
            raise AssertionError(f"the compile ended before {what}: {process.stderr.read()[-3000:]}")
        time.sleep(0.1)
    return found


def running_run(pid: int):
    client = MlflowClient()
    experiment = client.get_experiment_by_name("pipec")
    if experiment is None:
        return None
    runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.`pipec.pid` = '{pid}'")
    return runs[0] if runs and runs[0].info.status == "RUNNING" else None


def test_kill_9_during_compile_shows_killed_in_the_next_runs_list(tmp_path):
    process = start_compile(tmp_path, "--optimizer", "bootstrap-rs", "--threads", "1", latency="0.2")
    try:
        run = wait_for(lambda: running_run(process.pid), process, "its run was RUNNING")
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == -signal.SIGKILL
    assert MlflowClient().get_run(run.info.run_id).info.status == "RUNNING"  # nobody could end it

    rows = json.loads(pipec("runs", "list", "--json").stdout)
    row = next(r for r in rows if r["run_id"] == run.info.run_id)
    assert row["status"] == "KILLED"
    assert f"process {process.pid} on host" in row["killed_reason"]
    assert "found by pipec runs list" in row["killed_reason"]
