import dspy
import pytest

from experiments.evaluate import evaluate_program
from experiments.runner import program_version, run_traced
from metrics import NoPII, PipelineMetric
from metrics.guards import Guards
from programs.builtin import Triage
from programs.errors import LMError
from tests.fakes import fake_lm, triage_respond


def _examples(n):
    messages = ["I was charged twice", "my parcel never arrived", "cannot log in", "the app crashes",
                "I want my money back"]
    labels = ["billing", "shipping", "account", "technical", "refund"]
    return [dspy.Example(message=messages[i % 5], category=labels[i % 5],
                         reply="We are on it and will write again today.").with_inputs("message") for i in range(n)]


def test_a_trace_holds_every_node_call_with_timing_and_tokens():
    lm, _ = fake_lm(triage_respond)
    with dspy.context(lm=lm.lm, adapter=lm.adapter):
        trace = run_traced(Triage(), {"message": "where is my parcel?"}, pipeline_name="triage")
    assert trace.error is None and trace.error_kind is None
    assert [c.node for c in trace.calls] == ["classify", "reply"]
    classify, reply = trace.calls
    assert classify.kind == "classifier" and classify.output == "shipping" and classify.inputs == {
        "message": "where is my parcel?"}
    assert reply.inputs["category"] == "shipping" and "shipping team" in reply.output
    assert all(c.lm_calls == 1 and c.prompt_tokens == 10 and c.completion_tokens == 5 for c in trace.calls)
    assert all(c.seconds > 0 for c in trace.calls) and trace.seconds >= sum(c.seconds for c in trace.calls)
    assert trace.program_version == program_version(Triage()) and len(trace.program_version) == 12
    assert trace.as_dict()["calls"][1]["outputs"]["reply"] == reply.output


def _failing_lm(exc_type, fail_on="reply"):
    from dspy import lm15

    def respond(fields, inputs):
        if fail_on in fields:
            raise getattr(lm15, exc_type)("the provider is down", status=503)
        return triage_respond(fields, inputs)

    return fake_lm(respond, num_retries=0)[0]


def test_an_lm_that_does_not_answer_is_an_lm_error_with_the_calls_before_it_kept():
    lm = _failing_lm("ServerError")
    with dspy.context(lm=lm.lm, adapter=lm.adapter):
        trace = run_traced(Triage(), {"message": "I was charged twice"})
    assert trace.error_kind == "lm" and trace.prediction is None
    assert [(c.node, c.error is None) for c in trace.calls] == [("classify", True), ("reply", False)]
    assert trace.calls[1].lm_error and trace.calls[0].output == "billing"


def test_a_program_bug_is_a_program_error():
    class Broken(Triage):
        def forward(self, message):
            self.classify(message=message)
            raise ValueError("bug in forward")

    lm, _ = fake_lm(triage_respond)
    with dspy.context(lm=lm.lm, adapter=lm.adapter):
        trace = run_traced(Broken(), {"message": "hi"})
    assert trace.error_kind == "program" and "bug in forward" in trace.error and len(trace.calls) == 1


def test_a_blocked_input_never_reaches_the_lm():
    lm, engine = fake_lm(triage_respond)
    with dspy.context(lm=lm.lm, adapter=lm.adapter):
        trace = run_traced(Triage(), {"message": "mail me at jo@example.com"}, guards=Guards((NoPII(),)))
    assert trace.error_kind == "rejected" and not trace.calls and not engine.requests
    assert not trace.guard_verdicts["pii"].passed


def test_lm_errors_are_counted_beside_the_score_not_scored():
    """The reply call of every 'cannot log in' example fails for the LM, retries included: those
    examples are errors, left out of the mean, never scored 0."""
    from dspy import lm15

    def respond(fields, inputs):
        if "reply" in fields and inputs.get("message") == "cannot log in":
            raise lm15.TimeoutError("timed out")
        return triage_respond(fields, inputs)

    lm, _ = fake_lm(respond, num_retries=0)
    examples = _examples(9)  # "cannot log in" at 2 and 7
    with dspy.context(lm=lm.lm, adapter=lm.adapter):
        report = evaluate_program(Triage(), examples, PipelineMetric(Triage()), progress=False)
    assert report.lm_errors == 2 and report.scored == 7 and report.errors == 2
    assert [r.index for r in report.results if r.lm_error] == [2, 7]
    counted = [r.score for r in report.results if not r.lm_error]
    assert report.score == pytest.approx(sum(counted) / 7)
    assert report.summary()["lm_errors"] == 2


def test_a_transient_failure_is_retried_and_answered():
    from dspy import lm15

    failed = {"n": 0}

    def respond(fields, inputs):
        if "category" in fields and failed["n"] < 1:
            failed["n"] += 1
            raise lm15.ServerError("503 from the server", status=503)
        return triage_respond(fields, inputs)

    lm, engine = fake_lm(respond)
    with dspy.context(lm=lm.lm, adapter=lm.adapter):
        trace = run_traced(Triage(), {"message": "my parcel"})
    assert trace.error is None and trace.calls[0].output == "shipping" and len(engine.requests) == 3


def test_past_the_error_budget_the_evaluation_fails():
    lm = _failing_lm("ServerError", fail_on="category")
    with dspy.context(lm=lm.lm, adapter=lm.adapter), pytest.raises(LMError, match="error budget of 2"):
        evaluate_program(Triage(), _examples(10), PipelineMetric(Triage()), progress=False)
