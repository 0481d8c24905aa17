import json

import dspy
import pytest
from mlflow.tracking import MlflowClient

from experiments.evaluate import EvalReport, ExampleResult
from experiments.reports import log_node_reports, node_details, node_metrics, verdict_table
from experiments.runner import Trace
from experiments.tracking import RunTracker
from metrics.verdict import Verdict
from programs.builtin import Triage
from programs.trace import NodeCall


def traced(message, category=None, reply=None, error=None):
    """The trace of one Triage run: its node calls, as the evaluation core records them."""
    calls = []
    if category is not None:
        calls.append(NodeCall("classify", "classifier", 0, {"message": message}, {"category": category}, "category"))
    if reply is not None:
        calls.append(NodeCall("reply", "writer", 1, {"message": message, "category": category}, {"reply": reply},
                              "reply"))
    prediction = None if error else dspy.Prediction(category=category, reply=reply)
    return Trace("t", "triage", "v", {"message": message}, prediction, calls, error,
                 "program" if error else None)


@pytest.fixture
def evaluation():
    examples = [dspy.Example(message=m, category=c, reply="r").with_inputs("message")
                for m, c in (("charged twice", "billing"), ("where is my parcel", "shipping"), ("hi", "refund"))]
    first, second = traced("charged twice", "billing", "We fix it."), traced("where is my parcel", "billing", "Soon.")
    results = [
        ExampleResult(0, first.prediction, {"classify": Verdict.ok(), "reply": Verdict.ok()}, 1.0, trace=first),
        ExampleResult(1, second.prediction,
                      {"classify": Verdict.fail("label 'shipping' expected, got 'billing'."),
                       "reply": Verdict.abstain("the judge could not grade this output.", judge_failures=1)}, 0.0,
                      trace=second),
        ExampleResult(2, None, {"classify": Verdict.fail("the pipeline raised X"),
                                "reply": Verdict.fail("the pipeline raised X")}, 0.0, error="X",
                      trace=traced("hi", error="X")),
    ]
    return Triage(), EvalReport(results), examples


def test_node_details(evaluation):
    details = node_details(*evaluation)
    classify, reply = details["classify"], details["reply"]
    assert classify["kind"] == "classifier" and classify["pass_rate"] == pytest.approx(1 / 3)
    assert classify["labels"]["billing"] == {"precision": 0.5, "recall": 1.0, "f1": pytest.approx(2 / 3),
                                             "support": 1, "predicted": 2}
    assert classify["confusion"]["refund"]["(none)"] == 1
    assert reply["score"] == 0.5 and reply["judged"] == 2 and reply["judge_failures"] == 1  # 1.0 and 0.0 counted
    assert "labels" not in reply


def test_metric_names(evaluation):
    metrics = node_metrics("compiled", node_details(*evaluation))
    assert metrics["compiled.node.classify.label.billing.f1"] == pytest.approx(2 / 3)
    assert "compiled.node.classify.macro_f1" in metrics and metrics["compiled.node.reply.judge_failures"] == 1
    assert "compiled.node.reply.macro_f1" not in metrics


def test_verdict_table_rows(evaluation):
    pipeline, report, examples = evaluation
    table = verdict_table(pipeline, report, examples)
    assert len(table["node"]) == 6
    row = 3  # example 1, node reply: the judge could not grade it
    assert (table["example"][row], table["node"][row], table["output"][row]) == (1, "reply", "Soon.")
    assert table["score"][row] is None and table["counted"][row] is False
    assert json.loads(table["inputs"][row]) == {"message": "where is my parcel"}
    assert table["output"][4] is None and table["feedback"][4] == "the pipeline raised X"


def test_everything_lands_in_the_run(evaluation):
    tracker = RunTracker("reports")
    with tracker.start():
        log_node_reports(tracker, "baseline", *evaluation)
    client = MlflowClient()
    metrics = client.get_run(tracker.run_id).data.metrics
    assert metrics["baseline.node.classify.label.billing.recall"] == 1.0 and metrics["baseline.judge_failures"] == 1
    files = {f.path for f in client.list_artifacts(tracker.run_id, "evaluation")}
    assert files == {"evaluation/baseline_verdicts.json", "evaluation/baseline_classify_classification.json",
                     "evaluation/baseline_classify_confusion.png"}
    table = json.load(open(client.download_artifacts(tracker.run_id, "evaluation/baseline_verdicts.json")))
    assert table["columns"][:4] == ["example", "example_id", "node", "output"] and len(table["data"]) == 6
