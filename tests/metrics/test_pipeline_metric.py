import dspy
import pytest

from metrics import PipelineMetric, Verdict
from programs.builtin import Triage
from programs.trace import NodeCall, attach


@pytest.fixture
def metric():
    return PipelineMetric(Triage())


@pytest.fixture
def example():
    example = dspy.Example(message="I was charged twice", category="billing", reply="Sorry, we refund it.")
    return example.with_inputs("message")


def produced(**outputs):
    """A prediction carrying node calls, as a Triage run attaches them: ``category`` from
    classify, ``reply`` from reply."""
    calls = []
    if "category" in outputs:
        calls.append(NodeCall("classify", "classifier", len(calls), {"message": "m"},
                              {"category": outputs["category"]}, "category"))
    if "reply" in outputs:
        calls.append(NodeCall("reply", "writer", len(calls), {"message": "m", "category": "c"},
                              {"reply": outputs["reply"]}, "reply"))
    prediction = dspy.Prediction(**outputs)
    attach(prediction, calls)
    return prediction


def test_scores_are_the_mean_of_node_scores(metric, example):
    good = produced(category="billing", reply="We are sorry; the duplicate charge is refunded today.")
    half = produced(category="refund", reply="We are sorry; the duplicate charge is refunded today.")
    assert metric(example, good) == 1.0
    assert metric(example, half) == 0.5


def test_bootstrap_gets_a_pass_fail_with_a_trace(metric, example):
    half = produced(category="refund", reply="We are sorry; the duplicate charge is refunded today.")
    assert metric(example, half, trace=[]) is False


def test_feedback_for_gepa_names_the_node(metric, example):
    bad = produced(category="refund", reply="ok")
    whole = metric(example, bad, None, None, None)
    assert isinstance(whole, float)
    node = metric(example, bad, None, "classify", None)
    assert node.score == 0.0 and node.feedback == "label 'billing' expected, got 'refund'."
    both = PipelineMetric(Triage(), feedback=True)(example, bad)
    assert both.feedback.splitlines() == ["classify: label 'billing' expected, got 'refund'.",
                                          "reply: text is 1 words, minimum 5."]


def test_a_failed_run_fails_every_node(metric, example):
    verdicts = metric.judge(example, None)
    assert set(verdicts) == {"classify", "reply"} and not any(v.passed for v in verdicts.values())


def test_a_raising_validator_is_a_failed_check(example):
    def broken(output, **_):
        raise RuntimeError("boom")

    pipeline = Triage()
    pipeline.reply.validators.append(broken)
    prediction = produced(category="billing", reply="fine reply for you here")
    verdict = PipelineMetric(pipeline).judge(example, prediction)["reply"]
    assert not verdict.passed and "raised boom" in verdict.feedback


def test_weights():
    class Weighted(Triage):
        weights = {"classify": 3.0}

    verdicts = {"classify": Verdict.ok(), "reply": Verdict.fail("x")}
    assert PipelineMetric(Weighted()).score(verdicts) == 0.75


def test_gepa_reflection_sees_the_sql_validator_feedback():
    """A GEPA compile of the sql pipeline on scripted LMs: the feedback of the generate node's
    validator (the DuckDB error and the static "did you mean") reaches the reflection prompt."""
    import json

    from optimizers.registry import prepare_optimizer
    from programs.builtin import SqlQA, builtin_dataset
    from tests.fakes import _text, fake_lm

    def task(fields, inputs):
        answer = {}
        if "sql" in fields:
            answer["sql"] = "SELECT SUM(quantiti) FROM orders"
        if "answer" in fields:
            answer["answer"] = "The total is in the result."
        return answer

    task_lm, _ = fake_lm(task)
    reflection_lm, reflection = fake_lm(lambda fields, inputs: dict.fromkeys(fields, "Use the schema's columns."))
    rows = [json.loads(line) for line in builtin_dataset("sql").read_text(encoding="utf-8").splitlines()[:6]]
    examples = [dspy.Example(**row).with_inputs("question") for row in rows]
    pipeline = SqlQA()
    metric = PipelineMetric(pipeline, feedback=True)
    prepared = prepare_optimizer("gepa", metric, {"max_metric_calls": 12, "reflection_minibatch_size": 2},
                                 lm=reflection_lm.lm, threads=1)
    with dspy.context(lm=task_lm.lm, adapter=task_lm.adapter):
        prepared.teleprompter.compile(pipeline, trainset=examples[:3], valset=examples[3:])

    prompts = ["\n".join(_text(m.parts) for m in request.messages) for request in reflection.requests]
    assert prompts, "GEPA never called the reflection LM"
    seen = "\n".join(prompts)
    assert "the SQL failed: Binder Error: Referenced column" in seen  # DuckDB's own error
    assert "column `quantiti` does not exist; table `orders` has" in seen and "Did you mean `quantity`?" in seen


def test_pred_name_selects_that_nodes_feedback():
    from programs.builtin import SqlQA

    metric = PipelineMetric(SqlQA())
    example = dspy.Example(question="How many orders?", sql="select count(*) from orders",
                           answer="There are 30 orders.").with_inputs("question")
    prediction = dspy.Prediction(sql="select count(*) from order", answer="There are 30 orders.")
    attach(prediction, [NodeCall("generate", "codegen", 0, {"question": "How many orders?"},
                                 {"sql": "select count(*) from order"}, "sql"),
                        NodeCall("answer", "writer", 1, {"question": "How many orders?"},
                                 {"answer": "There are 30 orders."}, "answer")])
    generate = metric(example, prediction, None, "generate", None)
    assert generate.score == 0.5 and "Did you mean `orders`?" in generate.feedback
    assert metric(example, prediction, None, "answer", None).feedback == "This step's output was correct."


# What each node produced is judged, whatever the pipeline returns (read from DSPy's trace).

class Renamed(Triage):
    """Returns the classifier's label under another name and drops the reply."""

    def forward(self, message):
        category = self.classify(message=message).category
        self.reply(message=message, category=category)
        return dspy.Prediction(team=category)


class Twice(Triage):
    """Calls the classifier twice (a second opinion) and returns only the reply."""

    def forward(self, message):
        first = self.classify(message=message).category
        second = self.classify(message=message + " (again)").category
        return dspy.Prediction(reply=self.reply(message=message, category=second).reply, first=first)


def _run(pipeline, respond, example):
    from tests.fakes import fake_lm

    lm, _ = fake_lm(respond)
    with dspy.context(lm=lm.lm, adapter=lm.adapter):
        return pipeline(**example.inputs())


def test_a_renamed_or_dropped_output_is_judged_on_what_the_node_produced(example):
    from tests.fakes import triage_respond

    prediction = _run(Renamed(), triage_respond, example)
    assert "category" not in prediction and "reply" not in prediction
    verdicts = PipelineMetric(Renamed()).judge(example, prediction)
    assert verdicts["classify"].passed, verdicts["classify"].feedback  # "charged" -> billing, from the call
    assert verdicts["reply"].passed, verdicts["reply"].feedback  # the reply it wrote, though not returned


def test_a_node_called_twice_has_both_calls_judged(example):
    answers = iter(["billing", "refund"])

    def respond(fields, inputs):
        if "category" in fields:
            return {"category": next(answers)}
        return {"reply": "We are sorry; the duplicate charge is refunded today."}

    prediction = _run(Twice(), respond, example)
    from programs.trace import node_calls

    assert [c.node for c in node_calls(prediction)] == ["classify", "classify", "reply"]
    verdict = PipelineMetric(Twice()).judge(example, prediction)["classify"]
    assert verdict.score == 0.5 and not verdict.passed and "got 'refund'" in verdict.feedback


def test_a_prediction_without_node_calls_is_not_read_by_its_fields(metric, example):
    """The old way (fields of the final prediction) is gone: a bare Prediction has no calls."""
    verdicts = metric.judge(example, dspy.Prediction(category="billing", reply="a fine reply for you"))
    assert not verdicts["classify"].passed and "was not called" in verdicts["classify"].feedback


def test_dspy_trace_is_read_when_the_prediction_carries_no_calls(metric, example):
    pipeline = metric.pipeline
    trace = [(pipeline.classify, {"message": "m"}, dspy.Prediction(category="billing")),
             (pipeline.reply, {"message": "m", "category": "billing"},
              dspy.Prediction(reply="We are sorry; the duplicate charge is refunded today."))]
    assert metric(example, dspy.Prediction(), trace=trace) is True


def test_an_lm_failure_is_not_graded(metric, example):
    calls = [NodeCall("classify", "classifier", 0, {"message": "m"}, None, "category",
                      error="LMTimeoutError: timed out", lm_error=True)]
    verdict = metric.judge_calls(example, calls, failed=True)["classify"]
    assert not verdict.counted and not verdict.passed and verdict.details["lm_errors"] == 1


def test_gepa_traced_minibatches_are_judged_on_their_node_calls(example):
    """DSPy's ``bootstrap_trace_data`` (GEPA's traced minibatches) patches ``forward`` to return
    ``(prediction, trace)`` and calls the metric without the trace: the node calls must still
    reach the metric, or every traced minibatch scores 0 and GEPA never accepts a candidate."""
    from dspy.teleprompt.bootstrap_trace import bootstrap_trace_data

    from tests.fakes import fake_lm, triage_respond

    pipeline = Triage()
    metric = PipelineMetric(pipeline)
    lm, _ = fake_lm(triage_respond)
    with dspy.context(lm=lm.lm, adapter=lm.adapter):
        data = bootstrap_trace_data(pipeline, [example], metric=metric, num_threads=1)
    assert [entry["score"] for entry in data] == [metric(example, _run(Triage(), triage_respond, example))]
    assert data[0]["score"] > 0  # "charged" -> billing, as the scripted classifier answers
