import pytest

from benchmarks.overhead import _fit


def test_fit_splits_wall_time_into_fixed_and_per_call_costs():
    # 0.5 s + 2 ms per call for plain, 1.2 s + 2.3 ms per call for pipec, measured at two sizes.
    small = {"lm_calls": {"plain": 400, "pipec": 400}, "plain_s": 0.5 + 0.8, "pipec_s": 1.2 + 0.92}
    large = {"lm_calls": {"plain": 2400, "pipec": 2400}, "plain_s": 0.5 + 4.8, "pipec_s": 1.2 + 5.52}
    assert _fit(small, large, "plain") == pytest.approx((0.5, 2.0))
    assert _fit(small, large, "pipec") == pytest.approx((1.2, 2.3))


def test_optimizer_progress_goes_nowhere_and_warnings_are_shown_after(capsys):
    import sys
    import warnings

    from benchmarks.overhead import _quiet_progress

    with pytest.warns(RuntimeWarning, match="tracking failed"):
        with _quiet_progress():
            print("Average Metric: 1.00 / 1")
            print("  0%|          | 0/40", file=sys.stderr)
            warnings.warn("tracking failed", RuntimeWarning, stacklevel=1)
    out, err = capsys.readouterr()
    assert "Average Metric" not in out and "0/40" not in err
