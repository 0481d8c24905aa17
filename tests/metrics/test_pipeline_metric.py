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
