"""Classifier quality over an evaluation: per-label precision, recall and F1, macro-F1, and the
confusion matrix, as pure functions of ``(gold, predicted)`` pairs.

A prediction outside the label set (or a missing one) is kept under its own name (``(none)``
for a missing one), so it counts against recall and shows up in the matrix. An undefined ratio
(no predictions of a label, no gold examples of it) is 0, as in scikit-learn's
``zero_division=0``. Macro-F1 averages the labels that occur, in gold or in predictions: a label
absent from both says nothing about the classifier.

Example:
    >>> report = classification_report([("a", "a"), ("a", "b"), ("b", "b")], labels=["a", "b"])
    >>> round(report.macro_f1, 3), report.confusion["a"]["b"]
    (0.667, 1)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["MISSING_LABEL", "ClassificationReport", "LabelScores", "classification_report", "confusion_matrix"]

MISSING_LABEL = "(none)"

Pair = tuple[Any, Any]


def _name(label: Any) -> str:
    return MISSING_LABEL if label is None or str(label).strip() == "" else str(label).strip()


def _labels(pairs: Sequence[tuple[str, str]], labels: Iterable[str]) -> list[str]:
    """The declared labels in order, then any other label seen, in order of appearance."""
    ordered = list(dict.fromkeys(str(label) for label in labels))
    for gold, predicted in pairs:
        for label in (gold, predicted):
            if label not in ordered:
                ordered.append(label)
    return ordered


def confusion_matrix(pairs: Iterable[Pair], labels: Iterable[str] = ()) -> dict[str, dict[str, int]]:
    """``matrix[gold][predicted]`` = how many examples of ``gold`` were predicted ``predicted``."""
    named = [(_name(g), _name(p)) for g, p in pairs]
    order = _labels(named, labels)
    matrix = {g: dict.fromkeys(order, 0) for g in order}
    for gold, predicted in named:
        matrix[gold][predicted] += 1
    return matrix


@dataclass(frozen=True)
class LabelScores:
    """One label's figures."""

    precision: float
    recall: float
    f1: float
    support: int  # gold examples of the label
    predicted: int  # examples predicted as the label

    def as_dict(self) -> dict[str, float | int]:
        return {"precision": self.precision, "recall": self.recall, "f1": self.f1, "support": self.support,
                "predicted": self.predicted}


@dataclass(frozen=True)
class ClassificationReport:
    """Per-label scores, macro-F1, accuracy and the confusion matrix of one classifier node."""

    labels: dict[str, LabelScores]
    confusion: dict[str, dict[str, int]]
    macro_f1: float
    accuracy: float
    examples: int

    def as_dict(self) -> dict[str, Any]:
        return {"macro_f1": self.macro_f1, "accuracy": self.accuracy, "examples": self.examples,
                "labels": {name: scores.as_dict() for name, scores in self.labels.items()},
                "confusion": self.confusion}


def _ratio(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else 0.0


def classification_report(pairs: Iterable[Pair], labels: Iterable[str] = ()) -> ClassificationReport:
    """Per-label precision/recall/F1, macro-F1, accuracy and the confusion matrix.

    Args:
        pairs: ``(gold, predicted)`` per example.
        labels: The classifier's label set, so every label is reported in its declared order,
            even one that never occurs (its scores are then 0 with support 0).
    """
    pairs = list(pairs)
    matrix = confusion_matrix(pairs, labels)
    scores = {}
    for label in matrix:
        hits = matrix[label][label]
        support = sum(matrix[label].values())
        predicted = sum(row[label] for row in matrix.values())
        precision, recall = _ratio(hits, predicted), _ratio(hits, support)
        f1 = _ratio(2 * hits, support + predicted)
        scores[label] = LabelScores(precision, recall, f1, support, predicted)
    occurring = [s.f1 for s in scores.values() if s.support or s.predicted]
    correct = sum(matrix[label][label] for label in matrix)
    return ClassificationReport(scores, matrix, sum(occurring) / len(occurring) if occurring else 0.0,
                                _ratio(correct, len(pairs)), len(pairs))
