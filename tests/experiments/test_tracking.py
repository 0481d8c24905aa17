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


def test_metrics_and_params_queued_while_the_writer_is_busy_go_in_one_batch():
    import threading

    release = threading.Event()
    batches = []
    tracker = RunTracker("t")
    with tracker.start():
        client = tracker._client
        log_batch = client.log_batch

        def counted(run_id, metrics=(), params=(), tags=()):  # the real client, its calls counted
            batches.append((len(metrics), len(params)))
            return log_batch(run_id, metrics=metrics, params=params, tags=tags)

        client.log_batch = counted
        tracker.submit("a slow write", lambda c, r: release.wait())
        for step in range(20):
            tracker.metrics({"m": step, "score": 0.5}, step=step)
        tracker.params({"optimizer": {"k": 8}, "seed": 0})
        tracker.params({"seed": 0})  # the same param again: written once
        release.set()
    assert batches == [(40, 2)]
    run = MlflowClient().get_run(tracker.run_id)
    assert run.data.params == {"optimizer.k": "8", "seed": "0"} and run.data.metrics["m"] == 19
    assert [m.step for m in MlflowClient().get_metric_history(tracker.run_id, "m")] == list(range(20))


def test_a_side_write_runs_beside_a_busy_writer_and_is_in_the_store_when_the_run_ends():
    import threading

    release = threading.Event()
    side_done = threading.Event()

    def slow(client, run_id):  # the writer is held until the side write has run
        assert release.wait(30)

    def side(client, run_id):
        client.set_tag(run_id, "side", "written")
        side_done.set()
        release.set()

    def broken(client, run_id):
        raise OSError("trace store gone")

    tracker = RunTracker("t")
    with pytest.warns(RuntimeWarning, match="trace store gone"), tracker.start():
        tracker.submit("holding the writer", slow)
        tracker.submit("a side write", side, side=True)
        tracker.submit("a broken side write", broken, side=True)
    assert side_done.is_set()
    run = MlflowClient().get_run(tracker.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["side"] == "written"
