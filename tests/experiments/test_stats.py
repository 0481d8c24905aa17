"""Bootstrap intervals and verdict flips (experiments.stats)."""

import math

import pytest

from experiments.stats import mean_interval, paired_delta, repeat_interval, verdict_flips


def test_paired_delta_is_the_mean_difference_and_its_interval_holds_it():
    a = [0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0]
    b = [1.0, 1.0, 1.0, 1.0, 0.0, 1.0, 1.0, 0.0]
    d = paired_delta(a, b, seed=1)
    assert d["delta"] == pytest.approx(3 / 8)
    assert d["a"] == pytest.approx(3 / 8) and d["b"] == pytest.approx(6 / 8) and d["n"] == 8
    assert 0.0 <= d["low"] <= d["delta"] <= d["high"] <= 1.0
    assert paired_delta(a, b, seed=1) == d  # seeded: the same interval every time


def test_paired_delta_of_identical_runs_is_zero_with_a_zero_width_interval():
    scores = [0.2, 0.9, 0.5, 1.0]
    assert paired_delta(scores, scores) == {"a": pytest.approx(0.65), "b": pytest.approx(0.65), "delta": 0.0,
                                            "low": 0.0, "high": 0.0, "n": 4}


def test_uncounted_scores_leave_the_pair_out():
    d = paired_delta([1.0, None, 0.0, float("nan")], [1.0, 0.0, 1.0, 1.0])
    assert d["n"] == 2 and d["delta"] == pytest.approx(0.5)
    assert paired_delta([None], [1.0])["delta"] is None
    with pytest.raises(ValueError, match="equal lengths"):
        paired_delta([1.0], [1.0, 0.0])


def test_mean_interval():
    m = mean_interval([1.0, 0.0, 1.0, 1.0, None])
    assert m["mean"] == pytest.approx(0.75) and m["n"] == 4 and m["low"] <= 0.75 <= m["high"]
    assert mean_interval([None])["mean"] is None


def test_repeat_interval_spans_repeats_and_examples():
    steady = repeat_interval([[1.0, 0.0, 1.0]] * 3)
    assert steady["mean"] == pytest.approx(2 / 3) and steady["repeats"] == [pytest.approx(2 / 3)] * 3
    shaky = repeat_interval([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0], [1.0, 1.0, 1.0]])
    assert shaky["repeats"] == [pytest.approx(2 / 3), pytest.approx(1 / 3), pytest.approx(1.0)]
    assert shaky["low"] <= shaky["mean"] <= shaky["high"]
    constant = repeat_interval([[0.5, 0.5]] * 4)
    assert constant["low"] == constant["high"] == pytest.approx(0.5)
    assert math.isclose(repeat_interval([[None, 1.0], [None, 0.0]])["mean"], 0.5)


def test_verdict_flips_count_changes_between_consecutive_repeats():
    passed = [[True, True, False, None],
              [False, True, False, True],
              [True, True, True, False]]
    assert verdict_flips(passed) == [2, 0, 1, 1]
    assert verdict_flips([]) == []
