"""Verdict: the one currency of judgement in pipec.

A check that could not judge (an LLM judge whose answers stayed malformed after its retries)
returns an *uncounted* verdict (:meth:`Verdict.abstain`): it is not a 0 and not a 1. It is
left out of every mean (the node's, the pipeline's), counted in ``details["judge_failures"]``,
and never passes, since nothing vouched for the output.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Verdict", "combine"]


@dataclass(frozen=True)
class Verdict:
    """The judgement of one output by one check (or several, combined).

    Attributes:
        score: In [0, 1]; 1 is perfect.
        passed: Whether the output is acceptable.
        feedback: What to change, specific enough for an optimizer to act on ("" when passed).
        details: Machine-readable extras (expected/got values, counts, errors).
        counted: False when the check could not judge: the score is then a placeholder that
            means are computed without.
    """

    score: float
    passed: bool
    feedback: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    counted: bool = True

    def __post_init__(self) -> None:
        if not 0.0 <= self.score <= 1.0:
            raise ValueError(f"Verdict score must be in [0, 1], got {self.score}")

    @classmethod
    def ok(cls, **details: Any) -> Verdict:
        return cls(1.0, True, "", dict(details))

    @classmethod
    def fail(cls, feedback: str, score: float = 0.0, **details: Any) -> Verdict:
        return cls(score, False, feedback, dict(details))

    @classmethod
    def abstain(cls, feedback: str, **details: Any) -> Verdict:
        """The check could not judge: not passed, and left out of every mean."""
        return cls(0.0, False, feedback, dict(details), counted=False)


_SUMMED = ("judge_failures", "lm_errors")  # counts that add up when checks are combined


def combine(verdicts: Iterable[Verdict]) -> Verdict:
    """Combines the checks of one node: the mean score of the counted checks, passed only when
    all passed, feedback joined, ``judge_failures`` and ``lm_errors`` summed. Uncounted when no check counted."""
    verdicts = list(verdicts)
    if not verdicts:
        return Verdict.ok()
    counted = [v for v in verdicts if v.counted]
    score = sum(v.score for v in counted) / len(counted) if counted else 0.0
    feedback = " ".join(v.feedback for v in verdicts if v.feedback)
    details: dict[str, Any] = {}
    sums = dict.fromkeys(_SUMMED, 0)
    for v in verdicts:
        details.update(v.details)
        for key in _SUMMED:
            sums[key] += int(v.details.get(key, 0))
    details.update({key: n for key, n in sums.items() if n})
    return Verdict(score, all(v.passed for v in verdicts), feedback, details, counted=bool(counted))
