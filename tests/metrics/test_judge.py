"""The LLM judge on a scripted judge LM: typed answers, retries, judge failures, few-shot demos."""

import json

import dspy
import pytest

from metrics.judge import LLMJudge, judge_examples
from metrics.pipeline_metric import PipelineMetric
from programs import Pipeline, Writer
from programs.errors import LMAuthError, PipelineError
from tests.fakes import _text, fake_lm

RUBRIC = "The reply apologises and gives a delivery date."


def scripted(*answers):
    """A judge LM answering with ``answers`` in turn (the last one repeats)."""
    queue = list(answers)

    def respond(fields, inputs):
        answer = queue.pop(0) if len(queue) > 1 else queue[0]
        if isinstance(answer, Exception):
            raise answer
        return answer

    return fake_lm(respond)


def prompt(engine, index=-1):
    return "\n".join(_text(m.parts) for m in engine.requests[index].messages)


def test_a_score_and_comment_become_the_verdict():
    judge_lm, engine = scripted({"judgement": {"score": 0.25, "comment": "No delivery date is given."}})
    verdict = LLMJudge(RUBRIC, lm=judge_lm.lm, adapter=judge_lm.adapter)("Sorry!", gold="Sorry, it ships Monday.")
    assert (verdict.score, verdict.passed, verdict.counted) == (0.25, False, True)
    assert verdict.feedback == "the judge scored it 0.25: No delivery date is given."
    text = prompt(engine)
    assert RUBRIC in text and "Sorry, it ships Monday." in text and "[[ ## candidate ## ]]\nSorry!" in text


def test_the_judge_uses_the_judge_lm_not_the_task_lm():
    task_lm, task_engine = fake_lm(lambda fields, inputs: {"reply": "unused"})
    judge_lm, judge_engine = scripted({"judgement": {"score": 1.0, "comment": "Good."}})
    judge = LLMJudge(RUBRIC, lm=judge_lm.lm, adapter=judge_lm.adapter)
    with dspy.context(lm=task_lm.lm, adapter=task_lm.adapter, trace=[]):
        verdict = judge("Sorry, it ships Monday.")
        assert dspy.settings.trace == []  # the judge is no step of the pipeline's trace
    assert verdict.passed and verdict.feedback == "" and task_engine.requests == [] and len(judge_engine.requests) == 1


def test_without_a_judge_lm_the_task_lm_judges():
    task_lm, engine = scripted({"judgement": {"score": 0.9, "comment": "Fine, a date would help."}})
    with dspy.context(lm=task_lm.lm, adapter=task_lm.adapter):
        verdict = LLMJudge(RUBRIC)("Sorry, soon.")
    assert verdict.passed and verdict.score == 0.9 and len(engine.requests) == 1


def test_a_malformed_answer_is_retried_with_the_reason():
    judge_lm, engine = scripted({"judgement": {"score": 7, "comment": "great"}},
                                {"judgement": {"score": 0.7, "comment": "Apologises; the date is vague."}})
    verdict = LLMJudge(RUBRIC, lm=judge_lm.lm, adapter=judge_lm.adapter)("Sorry, it ships soon.")
    assert verdict.score == 0.7 and verdict.details["judge_attempts"] == 2
    assert "Your previous answer was rejected" in prompt(engine, 1)
    assert "less than or equal to 1" in prompt(engine, 1)


@pytest.mark.parametrize("bad", [
    {"judgement": {"score": 1.5, "comment": "too high"}},
    {"judgement": {"score": 0.5, "comment": ""}},
    {"judgement": "not an object"},
    {"verdict": "wrong field"},
])
def test_a_judge_that_never_answers_well_is_a_judge_failure(bad):
    judge_lm, engine = scripted(bad)
    verdict = LLMJudge(RUBRIC, lm=judge_lm.lm, adapter=judge_lm.adapter, retries=2)("Sorry!")
    assert len(engine.requests) == 3
    assert not verdict.counted and not verdict.passed and verdict.details["judge_failures"] == 1
    assert verdict.feedback.startswith("the judge could not grade this output after 3 attempts (last: ")
    assert len(verdict.details["judge_errors"]) == 3


def test_a_judge_lm_that_does_not_answer_is_an_lm_error_not_a_score():
    from dspy import lm15

    judge_lm, engine = scripted(lm15.ServerError("upstream unavailable", status=503))
    judge_lm.lm.num_retries = 0  # the LM's own retries (with backoff) are DSPy's; not this test's subject
    verdict = LLMJudge(RUBRIC, lm=judge_lm.lm, adapter=judge_lm.adapter, retries=2)("Sorry!")
    assert len(engine.requests) == 1  # not re-asked as if the answer were malformed
    assert not verdict.counted and not verdict.passed and verdict.details["lm_errors"] == 1
    assert "judge_failures" not in verdict.details
    assert verdict.feedback.startswith("not graded: the judge LM did not answer (")


def test_a_judge_lm_misconfigured_raises_one_line():
    from dspy import lm15

    from experiments.lm import PipecLM
    from tests.fakes import ScriptedEngine

    def respond(fields, inputs):
        raise lm15.AuthError("invalid api key", status=401)

    lm = PipecLM("openai/judge", spec="openai/judge", flag="--judge-lm", engine=ScriptedEngine(respond),
                 cache=False, num_retries=0)
    with pytest.raises(LMAuthError, match=r"^--judge-lm openai/judge: the API key was rejected \(HTTP 401\)"):
        LLMJudge(RUBRIC, lm=lm, adapter=dspy.JSONAdapter())("Sorry!")


def test_binary_mode():
    judge_lm, _ = scripted({"judgement": {"passed": False, "reason": "There is no apology."}})
    verdict = LLMJudge(RUBRIC, lm=judge_lm.lm, adapter=judge_lm.adapter, mode="binary")("It ships Monday.")
    assert (verdict.score, verdict.passed) == (0.0, False)
    assert verdict.feedback == "the judge failed it: There is no apology."
    judge_lm, _ = scripted({"judgement": {"passed": True, "reason": "Apology and date."}})
    assert LLMJudge(RUBRIC, lm=judge_lm.lm, adapter=judge_lm.adapter, mode="binary")("Sorry; Monday.").score == 1.0


def test_few_shot_examples_from_labelled_data(tmp_path):
    rows = [{"output": "Sorry, Monday.", "score": 1.0, "comment": "Apology and date."},
            {"candidate": "Whatever.", "score": 0.0, "reason": "Rude, no date.", "gold": "Sorry, Monday."}]
    path = tmp_path / "labels.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    judge_lm, engine = scripted({"judgement": {"score": 0.5, "comment": "Partly."}})
    judge = LLMJudge(RUBRIC, lm=judge_lm.lm, adapter=judge_lm.adapter, examples=str(path))
    assert len(judge.predict.demos) == 2
    judge("Sorry.")
    assert "Rude, no date." in prompt(engine) and "Whatever." in prompt(engine)
    with pytest.raises(PipelineError, match=r"row 1: needs 'candidate' \(or 'output'\), 'passed'"):
        judge_examples([{"output": "x", "score": 1, "comment": "y"}], rubric=RUBRIC, mode="binary")
    with pytest.raises(PipelineError, match="row 1"):
        judge_examples([{"output": "x", "score": 3, "comment": "y"}], rubric=RUBRIC)


class Replier(Pipeline):
    inputs = ("message",)
    gold = {"reply": "reply"}

    def __init__(self):
        super().__init__()
        self.reply = Writer("message", output="reply", rules={"rubric": RUBRIC, "max_words": 20})

    def forward(self, message):
        return dspy.Prediction(reply=self.reply(message=message).reply)


def replied(message, reply):
    """A Replier prediction carrying its node call, as a real run attaches it."""
    from programs.trace import NodeCall, attach

    prediction = dspy.Prediction(reply=reply)
    attach(prediction, [NodeCall("reply", "writer", 0, {"message": message}, {"reply": reply}, "reply")])
    return prediction


def test_a_judge_failure_is_left_out_of_the_means():
    judge_lm, _ = scripted({"judgement": {"score": 9, "comment": "?"}})
    metric = PipelineMetric(Replier(), judge_lm=judge_lm)
    example = dspy.Example(message="Where is it?", reply="Sorry, Monday.").with_inputs("message")
    verdicts = metric.judge(example, replied("Where is it?", "Sorry, it ships Monday."))
    reply = verdicts["reply"]
    assert reply.counted and reply.score == 1.0 and not reply.passed  # the length check alone is counted
    assert reply.details["judge_failures"] == 1 and "the judge could not grade" in reply.feedback
    assert metric(example, replied("Where is it?", "Sorry, it ships Monday.")) == 1.0
    assert metric(example, replied("Where is it?", "Sorry, it ships Monday."), trace=[]) is False


def test_the_task_inputs_reach_the_judge():
    judge_lm, engine = scripted({"judgement": {"score": 1.0, "comment": "ok"}})
    metric = PipelineMetric(Replier(), judge_lm=judge_lm)
    example = dspy.Example(message="荷物はどこですか？", reply="申し訳ありません。").with_inputs("message")
    metric.judge(example, replied("荷物はどこですか？", "申し訳ありません。月曜日に届きます。"))
    text = prompt(engine)
    assert "message: 荷物はどこですか？" in text and "申し訳ありません。月曜日に届きます。" in text


class _Demos:
    """A JudgeDemoSource answering with fixed rows and remembering what it was asked."""

    def __init__(self, rows=None, error=None):
        self.rows, self.error, self.asked = rows or [], error, []

    def judge_demos(self, *, validator, rubric, task_inputs, candidate, k):
        self.asked.append({"validator": validator, "task_inputs": task_inputs, "candidate": candidate, "k": k})
        if self.error:
            raise self.error
        return self.rows[:k]


def test_a_demo_source_chooses_the_demos_of_each_call():
    from metrics.judge import JudgeDemoSource, rubric_id

    judge_lm, engine = scripted({"judgement": {"passed": False, "reason": "no date"}})
    source = _Demos([{"candidate": "遅れてすみません。", "passed": False, "comment": "日付がない"}])
    assert isinstance(source, JudgeDemoSource)
    judge = LLMJudge(RUBRIC, lm=judge_lm.lm, adapter=judge_lm.adapter, mode="binary",
                     examples=[{"candidate": "fixed demo", "passed": True, "comment": "fine"}],
                     demo_source=source, demo_k=2)
    verdict = judge("Sorry!", task_inputs="message: 荷物が届かない")
    assert verdict.details["judge"] == judge.name == rubric_id(RUBRIC) == rubric_id(f"  {RUBRIC}\n")
    assert source.asked == [{"validator": judge.name, "task_inputs": "message: 荷物が届かない", "candidate": "Sorry!",
                             "k": 2}]
    text = prompt(engine)
    assert "遅れてすみません。" in text and "日付がない" in text and "fixed demo" not in text
    assert "荷物が届かない" in text  # the explicit task inputs


def test_a_failing_or_empty_demo_source_leaves_the_fixed_demos(caplog):
    judge_lm, engine = scripted({"judgement": {"passed": True, "reason": "fine"}})
    fixed = [{"candidate": "fixed demo", "passed": True, "comment": "fine"}]
    for source in (_Demos(error=RuntimeError("store gone")), _Demos([])):
        judge = LLMJudge(RUBRIC, lm=judge_lm.lm, adapter=judge_lm.adapter, mode="binary", examples=fixed,
                         demo_source=source)
        assert judge("Sorry, Monday.").passed
        assert "fixed demo" in prompt(engine)
    assert "the demo source failed (RuntimeError: store gone)" in caplog.text
