import dspy
import pytest

from metrics import PipelineMetric, Verdict
from programs.builtin import Triage


@pytest.fixture
def metric():
    return PipelineMetric(Triage())


@pytest.fixture
def example():
    example = dspy.Example(message="I was charged twice", category="billing", reply="Sorry, we refund it.")
    return example.with_inputs("message")


def test_scores_are_the_mean_of_node_scores(metric, example):
    good = dspy.Prediction(category="billing", reply="We are sorry; the duplicate charge is refunded today.")
    half = dspy.Prediction(category="refund", reply="We are sorry; the duplicate charge is refunded today.")
    assert metric(example, good) == 1.0
    assert metric(example, half) == 0.5


def test_bootstrap_gets_a_pass_fail_with_a_trace(metric, example):
    half = dspy.Prediction(category="refund", reply="We are sorry; the duplicate charge is refunded today.")
    assert metric(example, half, trace=[]) is False


def test_feedback_for_gepa_names_the_node(metric, example):
    bad = dspy.Prediction(category="refund", reply="ok")
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
    prediction = dspy.Prediction(category="billing", reply="fine reply for you here")
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
    generate = metric(example, prediction, None, "generate", None)
    assert generate.score == 0.5 and "Did you mean `orders`?" in generate.feedback
    assert metric(example, prediction, None, "answer", None).feedback == "This step's output was correct."
