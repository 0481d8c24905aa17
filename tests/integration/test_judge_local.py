"""The LLM judge on the real embedded model (SmolLM2-135M): a typed answer through constrained
decoding, or a counted judge failure; never a crash or a silent score."""

import pytest

from experiments.lm import make_lm
from metrics.judge import LLMJudge

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def judge_lm():
    return make_lm("local", cache=False)


def _assert_graded_or_flagged(verdict, judge_lm):
    assert 0.0 <= verdict.score <= 1.0
    if verdict.counted:
        assert 1 <= verdict.details["judge_attempts"] <= 3 and verdict.details["judge_comment"].strip()
    else:  # a judge failure is flagged and counted, never passed off as a score
        assert verdict.details["judge_failures"] == 1 and not verdict.passed
    assert judge_lm.lm.history, "the judge never called the judge LM"


def test_the_embedded_lm_scores_a_reply(judge_lm):
    judge = LLMJudge("The reply apologises to the customer and says when the parcel will arrive.",
                     lm=judge_lm.lm, adapter=judge_lm.adapter)
    verdict = judge("We are sorry for the delay; your parcel arrives on Monday.",
                    gold="Sorry for the wait! The parcel will arrive on Monday.")
    _assert_graded_or_flagged(verdict, judge_lm)


def test_the_embedded_lm_judges_japanese_pass_fail(judge_lm):
    judge = LLMJudge("返信は丁寧にお詫びする。", lm=judge_lm.lm, adapter=judge_lm.adapter, mode="binary")
    verdict = judge("ご迷惑をおかけして申し訳ございません。")
    _assert_graded_or_flagged(verdict, judge_lm)
    if verdict.counted:
        assert verdict.score in (0.0, 1.0)
