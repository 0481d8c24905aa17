"""``pipec`` in a subprocess, and a ``pipec compile`` killed outright (SIGKILL) at a chosen point.

The compile runs the slow pipeline (tests/slow_pipeline.py: a scripted LM with a fixed latency that
logs each call it answers) on a DSPy disk cache in the test's folder, against the test's MLflow store.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["SLOW_PIPELINE", "TRIAGE", "kill_compile", "pipec", "running_run", "slow_env", "start_compile", "wait_for"]

SLOW_PIPELINE = f"{Path(__file__).resolve().parent / 'slow_pipeline.py'}:SlowTriage"
TRIAGE = Path(__file__).resolve().parents[1] / "programs" / "data" / "triage.jsonl"


def pipec(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
          check: bool = True) -> subprocess.CompletedProcess:
    """``pipec ARGS`` to its end; with ``check``, a non-zero exit fails the test with its stderr."""
    done = subprocess.run([sys.executable, "-m", "experiments", *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=600)
    assert not check or done.returncode == 0, done.stderr[-3000:]
    return done


def slow_env(tmp_path: Path, log: str, cache: str, latency: str) -> dict[str, str]:
    """The environment of a slow-pipeline compile: its latency, its call log and its DSPy cache."""
    return {**os.environ, "SLOW_LM_LATENCY": latency, "SLOW_LM_LOG": str(tmp_path / log),
            "DSPY_CACHEDIR": str(tmp_path / cache)}


def start_compile(tmp_path: Path, *args: str, log: str = "calls.log", cache: str = "dspy-cache",
                  latency: str = "0.05", trainset: str | None = None) -> subprocess.Popen:
    """``pipec compile`` of the slow pipeline in a subprocess, on a DSPy disk cache in ``tmp_path``."""
    return subprocess.Popen([sys.executable, "-m", "experiments", "compile", SLOW_PIPELINE, "--trainset",
                             trainset or str(TRIAGE), *args, "--json"],
                            cwd=tmp_path, env=slow_env(tmp_path, log, cache, latency), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for(condition: Callable[[], Any], process: subprocess.Popen, what: str) -> Any:
    """Polls ``condition()`` until it is truthy; fails if ``process`` ends first."""
    while not (found := condition()):
        if process.poll() is not None:
            raise AssertionError(f"the compile ended before {what}: {process.stderr.read()[-3000:]}")
        time.sleep(0.1)
    return found


def running_run(pid: int) -> Any:
    """The RUNNING MLflow run of process ``pid`` in the ``pipec`` experiment, or None."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    experiment = client.get_experiment_by_name("pipec")
    if experiment is None:
        return None
    runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.`pipec.pid` = '{pid}'")
    return runs[0] if runs and runs[0].info.status == "RUNNING" else None


def kill_compile(process: subprocess.Popen, when: Callable[[], Any] | None = None, what: str = "") -> Any:
    """Kills the compile with SIGKILL once its run is RUNNING (and ``when()`` is truthy); the process
    is gone on return, whatever happened.

    Returns:
        The compile's MLflow run, as it was while RUNNING.
    """
    try:
        run = wait_for(lambda: running_run(process.pid), process, "its run was RUNNING")
        if when is not None:
            wait_for(when, process, what)
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return run
