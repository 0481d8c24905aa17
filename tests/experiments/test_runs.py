"""``pipec runs list`` against real ``pipec compile`` processes and a real sqlite store."""

import json
import signal

from mlflow.tracking import MlflowClient

from tests.killing import kill_compile, pipec, start_compile


def test_kill_9_during_compile_shows_killed_in_the_next_runs_list(tmp_path):
    process = start_compile(tmp_path, "--optimizer", "bootstrap-rs", "--threads", "1", latency="0.2")
    run = kill_compile(process)
    assert process.returncode == -signal.SIGKILL
    assert MlflowClient().get_run(run.info.run_id).info.status == "RUNNING"  # nobody could end it

    rows = json.loads(pipec("runs", "list", "--json").stdout)
    row = next(r for r in rows if r["run_id"] == run.info.run_id)
    assert row["status"] == "KILLED"
    assert f"process {process.pid} on host" in row["killed_reason"]
    assert "found by pipec runs list" in row["killed_reason"]
