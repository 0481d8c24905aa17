"""RunTracker: writes go to the store in the background, in order, and a failed write is a warning."""

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from experiments.tracking import RunTracker


def test_queued_writes_are_all_in_the_store_when_the_run_ends():
    tracker = RunTracker("t", run_name="r")
    with tracker.start():
        tracker.params({"a": {"b": 1}})
        for step in range(3):
            tracker.metrics({"m": step}, step=step)
        tracker.text("héllo", "notes/x.txt")
    run = MlflowClient().get_run(tracker.run_id)
    assert run.info.status == "FINISHED" and run.data.params["a.b"] == "1" and run.data.metrics["m"] == 2
    history = MlflowClient().get_metric_history(tracker.run_id, "m")
    assert [m.step for m in history] == [0, 1, 2]
    path = MlflowClient().download_artifacts(tracker.run_id, "notes/x.txt")
    assert open(path, encoding="utf-8").read() == "héllo"


def test_a_failed_write_is_a_warning_and_the_run_still_finishes():
    def broken(client, run_id):
        raise OSError("disk full")

    tracker = RunTracker("t")
    with pytest.warns(RuntimeWarning, match="disk full"), tracker.start():
        tracker.submit("writing something", broken)
    assert MlflowClient().get_run(tracker.run_id).info.status == "FINISHED"
    assert mlflow.active_run() is None
