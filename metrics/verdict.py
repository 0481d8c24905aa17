"""Verdict: the one currency of judgement in pipec."""

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
    """

    score: float
    passed: bool
    feedback: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 0.0 <= self.score <= 1.0:
            raise ValueError(f"Verdict score must be in [0, 1], got {self.score}")

    @classmethod
    def ok(cls, **details: Any) -> Verdict:
        return cls(1.0, True, "", dict(details))

    @classmethod
    def fail(cls, feedback: str, score: float = 0.0, **details: Any) -> Verdict:
        return cls(score, False, feedback, dict(details))


def combine(verdicts: Iterable[Verdict]) -> Verdict:
    """Combines the checks of one node: mean score, passed only when all passed, feedback joined."""
    verdicts = list(verdicts)
    if not verdicts:
        return Verdict.ok()
    score = sum(v.score for v in verdicts) / len(verdicts)
    feedback = " ".join(v.feedback for v in verdicts if v.feedback)
    details: dict[str, Any] = {}
    for v in verdicts:
        details.update(v.details)
    return Verdict(score, all(v.passed for v in verdicts), feedback, details)
