"""Candidate evaluations become child runs of the compile run, and nothing stays patched after it."""

import json

import dspy
from mlflow.tracking import MlflowClient

from experiments.compile import CompileOptions, compile_pipeline
from tests.fakes import fake_lm, triage_respond


def test_each_candidate_is_a_child_run_with_its_score_and_results():
    lm, _ = fake_lm(triage_respond)
    result = compile_pipeline(CompileOptions("triage", "bootstrap-rs", lm=lm, progress=False,
                                             params=["num_candidate_programs=1"]))
    client = MlflowClient()
    parent = client.get_run(result["run_id"])
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{result['run_id']}'",
                                  order_by=["attributes.start_time ASC"])
    # bootstrap-rs scores zero-shot, labeled-only, unshuffled and one random candidate.
    assert len(children) == 4
    for child in children:
        assert child.info.status == "FINISHED" and "eval" in child.data.metrics
        assert child.data.params["classify.demos"].isdigit()
        files = {f.path for f in client.list_artifacts(child.info.run_id)}
        assert {"model.json", "result_table.json"} <= files
        state = json.loads(open(client.download_artifacts(child.info.run_id, "model.json"), encoding="utf-8").read())
        table = json.loads(open(client.download_artifacts(child.info.run_id, "result_table.json"),
                                encoding="utf-8").read())
        assert "classify" in state and "score" in table["columns"] and table["data"]
    steps = client.get_metric_history(result["run_id"], "eval")
    assert sorted(m.step for m in steps) == [0, 1, 2, 3]
    assert not [c for c in dspy.settings.callbacks if type(c).__name__ == "CandidateRuns"]


def test_dspy_code_after_a_compile_is_not_tracked():
    lm, _ = fake_lm(triage_respond)
    result = compile_pipeline(CompileOptions("triage", "labeled", lm=lm, progress=False))
    client = MlflowClient()
    before = len(client.search_runs([result["experiment_id"]]))
    devset = [dspy.Example(message="where is my parcel", category="shipping").with_inputs("message")]
    with dspy.context(lm=lm.lm, adapter=lm.adapter):
        dspy.Evaluate(devset=devset, metric=lambda e, p, t=None: 1.0)(dspy.Predict("message -> category"))
    assert len(client.search_runs([result["experiment_id"]])) == before
