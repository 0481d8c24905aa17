"""Intervals people can trust: seeded bootstrap intervals for scores and score deltas, and how
often a verdict flips when the same example is run again.

All figures are computed with numpy from a seeded generator, so the same scores always give
the same interval. ``NaN`` marks a score that does not count (an uncounted verdict, an example
whose LM failed): it is left out of every mean.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

__all__ = ["LEVEL", "RESAMPLES", "mean_interval", "paired_delta", "repeat_interval", "verdict_flips"]

LEVEL = 0.95
RESAMPLES = 2000


def _nanmean_rows(matrix: Any) -> Any:
    import numpy as np

    counted = ~np.isnan(matrix)
    sums = np.where(counted, matrix, 0.0).sum(axis=-1)
    n = counted.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, sums / np.maximum(n, 1), np.nan)


def _interval(samples: Any, level: float) -> tuple[float | None, float | None]:
    import numpy as np

    samples = samples[~np.isnan(samples)]
    if samples.size == 0:
        return None, None
    tail = (1.0 - level) / 2 * 100
    low, high = np.percentile(samples, [tail, 100 - tail])
    return float(low), float(high)


def _clean(values: Sequence[float | None]) -> Any:
    import numpy as np

    return np.array([np.nan if v is None else float(v) for v in values], dtype=float)


def mean_interval(values: Sequence[float | None], *, seed: int = 0, resamples: int = RESAMPLES,
                  level: float = LEVEL) -> dict[str, Any]:
    """The mean of ``values`` (None/NaN left out) and a percentile-bootstrap interval over them.

    Returns:
        ``{"mean", "low", "high", "n"}``; the mean and bounds are None when nothing counts.
    """
    import numpy as np

    data = _clean(values)
    data = data[~np.isnan(data)]
    if data.size == 0:
        return {"mean": None, "low": None, "high": None, "n": 0}
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, data.size, size=(resamples, data.size))
    low, high = _interval(data[picks].mean(axis=1), level)
    return {"mean": float(data.mean()), "low": low, "high": high, "n": int(data.size)}


def paired_delta(a: Sequence[float | None], b: Sequence[float | None], *, seed: int = 0,
                 resamples: int = RESAMPLES, level: float = LEVEL) -> dict[str, Any]:
    """The paired difference ``mean(b) - mean(a)`` over the examples both score, with a paired
    bootstrap interval (examples resampled together, so both sides see the same draw).

    Args:
        a: Per-example scores of the first run; None/NaN where it does not count.
        b: The same examples' scores in the second run, in the same order.

    Returns:
        ``{"a", "b", "delta", "low", "high", "n"}``: means over the pairs where both count, the
        delta and its interval (None when no pair counts).
    """
    import numpy as np

    if len(a) != len(b):
        raise ValueError(f"paired scores need equal lengths, got {len(a)} and {len(b)}")
    left, right = _clean(a), _clean(b)
    both = ~np.isnan(left) & ~np.isnan(right)
    left, right = left[both], right[both]
    if left.size == 0:
        return {"a": None, "b": None, "delta": None, "low": None, "high": None, "n": 0}
    diff = right - left
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, diff.size, size=(resamples, diff.size))
    low, high = _interval(diff[picks].mean(axis=1), level)
    return {"a": float(left.mean()), "b": float(right.mean()), "delta": float(diff.mean()),
            "low": low, "high": high, "n": int(diff.size)}


def repeat_interval(scores: Sequence[Sequence[float | None]], *, seed: int = 0, resamples: int = RESAMPLES,
                    level: float = LEVEL) -> dict[str, Any]:
    """The mean score over repeated evaluations and a two-level bootstrap interval.

    ``scores[r][e]`` is example ``e``'s score in repeat ``r``. Each bootstrap draw resamples the
    examples, then for each drawn example resamples its repeats, so the interval holds both the
    spread between examples and the run-to-run fluctuation of each example.

    Returns:
        ``{"mean", "low", "high", "repeats": [mean of each repeat], "examples"}``.
    """
    import numpy as np

    matrix = np.array([_clean(row) for row in scores], dtype=float)
    if matrix.ndim != 2 or matrix.size == 0:
        return {"mean": None, "low": None, "high": None, "repeats": [], "examples": 0}
    n_repeats, n_examples = matrix.shape
    per_repeat = [None if np.isnan(m) else float(m) for m in _nanmean_rows(matrix)]
    counted = matrix[~np.isnan(matrix)]
    mean = float(counted.mean()) if counted.size else None
    rng = np.random.default_rng(seed)
    examples = rng.integers(0, n_examples, size=(resamples, 1, n_examples))
    repeats = rng.integers(0, n_repeats, size=(resamples, n_repeats, n_examples))
    draws = matrix[repeats, examples].reshape(resamples, -1)
    low, high = _interval(_nanmean_rows(draws), level) if mean is not None else (None, None)
    return {"mean": mean, "low": low, "high": high, "repeats": per_repeat, "examples": n_examples}


def verdict_flips(passed: Sequence[Sequence[bool | None]]) -> list[int]:
    """Per example, how many times its verdict changed from one repeat to the next.

    ``passed[r][e]`` is whether example ``e`` passed in repeat ``r`` (None: not judged, skipped).
    An example that passed, failed, passed over three repeats flipped twice; a steady one, 0.
    """
    if not passed:
        return []
    flips = []
    for e in range(len(passed[0])):
        seen = [row[e] for row in passed if row[e] is not None]
        flips.append(sum(x != y for x, y in itertools.pairwise(seen)))
    return flips
