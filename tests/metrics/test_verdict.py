import pytest

from metrics.verdict import Verdict, combine


def test_scores_outside_the_unit_interval_are_rejected():
    with pytest.raises(ValueError):
        Verdict(1.5, True)


def test_combine_averages_and_joins():
    combined = combine([Verdict.ok(words=3), Verdict.fail("too long.", score=0.5, chars=9)])
    assert (combined.score, combined.passed, combined.feedback) == (0.75, False, "too long.")
    assert combined.details == {"words": 3, "chars": 9} and combined.counted


def test_an_abstention_is_left_out_of_the_mean_but_never_passes():
    abstained = Verdict.abstain("the judge could not grade this output.", judge_failures=1)
    assert not abstained.counted and not abstained.passed
    combined = combine([Verdict.ok(), abstained])
    assert combined.score == 1.0 and combined.counted and not combined.passed
    assert combined.details["judge_failures"] == 1
    assert combine([abstained, abstained]).details["judge_failures"] == 2
    assert not combine([abstained]).counted
