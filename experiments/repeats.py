"""Repeated evaluations: the same examples run N times, to see how much a score moves when
nothing but chance changes.

Repeats only mean something when each one really asks the LM again: DSPy's response cache is
bypassed for them, and the LM samples only at a temperature above 0. At temperature 0 a
deterministic LM (the embedded one) gives the same answers each repeat; the summary then shows
zero flips and a zero-width spread between repeats, which is the honest result, and says why.

The summary holds the mean score over repeats with a two-level bootstrap 95% interval
(experiments.stats.repeat_interval), per node and overall, and per example how many times its
verdict flipped between consecutive repeats.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import dspy

from experiments.stats import LEVEL, repeat_interval, verdict_flips

__all__ = ["repeat_lm", "repeat_metrics", "repeat_summary", "resampling"]


def repeat_lm(lm: Any, temperature: float | None = None) -> Any:
    """A copy of ``lm`` that bypasses DSPy's cache (and samples at ``temperature`` when given);
    the copy shares the provider client or the local model with ``lm``."""
    changes: dict[str, Any] = {"cache": False}
    if temperature is not None:
        changes["temperature"] = temperature
    return lm.copy(**changes)


def resampling(lm: Any, judge_cached: bool | None = None) -> dict[str, Any]:
    """How repeats with ``lm`` re-sample: ``{"cache", "temperature", "note"}``.

    Args:
        lm: The LM the repeats use (see :func:`repeat_lm`).
        judge_cached: Whether a separate judge LM still answers from the cache (None: no
            separate judge).
    """
    temperature = (getattr(lm, "kwargs", {}) or {}).get("temperature")
    if temperature is None:
        note = "cache bypassed; the provider's default temperature"
    elif temperature > 0:
        note = f"cache bypassed; sampling at temperature {temperature:g}"
    else:
        note = ("cache bypassed; temperature 0: a deterministic LM (such as the embedded one) answers "
                "the same each repeat, so no flips are expected; pass --temperature 0.7 to sample")
    if judge_cached:
        note += "; the judge LM still uses the cache (pass --no-cache to bypass it too)"
    return {"cache": False, "temperature": temperature, "note": note}


def _node_matrix(ordered: Sequence[Sequence[Any]], node: str) -> list[list[float | None]]:
    return [[r.verdicts[node].score if node in r.verdicts and r.verdicts[node].counted and _counts(r) else None
             for r in rows] for rows in ordered]


def _counts(result: Any) -> bool:
    """False for an example whose LM failed (left out of every mean)."""
    trace = getattr(result, "trace", None)
    return getattr(trace, "error_kind", None) != "lm"


def _passed(result: Any, node: str | None = None) -> bool | None:
    if not _counts(result):
        return None
    verdicts = result.verdicts if node is None else {node: result.verdicts[node]} if node in result.verdicts else {}
    if not verdicts or not all(v.counted for v in verdicts.values()):
        return None
    return all(v.passed for v in verdicts.values())


def _round(value: float | None) -> float | None:
    return None if value is None or math.isnan(value) else round(value, 6)


def repeat_summary(reports: Sequence[Any], examples: Sequence[dspy.Example], *, seed: int = 0) -> dict[str, Any]:
    """Summarises N evaluations of the same examples (``reports[r].results[e]`` is example ``e``
    in repeat ``r``, matched by ``result.index``).

    Returns:
        ``repeats`` (N), ``level``, ``score`` (mean, low, high, each repeat's mean), ``nodes``
        (the same per node, plus ``flips``: verdict changes summed over examples, and
        ``flipped_examples``), ``flipped_examples`` (examples whose pass/fail changed at least
        once), and ``examples``: per example its index, id, pass/fail per repeat and flips per node.
    """
    ordered = [sorted(report.results, key=lambda r: r.index) for report in reports]
    nodes = list(ordered[0][0].verdicts) if ordered and ordered[0] else []
    overall = repeat_interval([[r.score if _counts(r) else None for r in rows] for rows in ordered], seed=seed)
    passed = [[_passed(r) for r in rows] for rows in ordered]
    flips = verdict_flips(passed)
    per_node: dict[str, Any] = {}
    node_flips: dict[str, list[int]] = {}
    for node in nodes:
        stats = repeat_interval(_node_matrix(ordered, node), seed=seed)
        node_flips[node] = verdict_flips([[_passed(r, node) for r in rows] for rows in ordered])
        per_node[node] = {**{k: _round(v) if isinstance(v, float) else v for k, v in stats.items()},
                          "repeats": [_round(v) for v in stats["repeats"]],
                          "flips": sum(node_flips[node]), "flipped_examples": sum(f > 0 for f in node_flips[node])}
    rows = []
    for e, result in enumerate(ordered[0] if ordered else []):
        example = examples[result.index]
        rows.append({"example": result.index, "example_id": str(example.get("id", result.index)),
                     "passed": [p[e] for p in passed], "flips": flips[e],
                     "nodes": {node: node_flips[node][e] for node in nodes},
                     "scores": [_round(rows_[e].score) for rows_ in ordered]})
    rows.sort(key=lambda row: (-row["flips"], row["example"]))
    return {
        "repeats": len(ordered), "level": LEVEL, "seed": seed,
        "score": {"mean": _round(overall["mean"]), "low": _round(overall["low"]), "high": _round(overall["high"]),
                  "repeats": [_round(v) for v in overall["repeats"]]},
        "nodes": per_node,
        "flipped_examples": sum(f > 0 for f in flips),
        "examples": rows,
    }


def repeat_metrics(stage: str, summary: dict[str, Any]) -> dict[str, float]:
    """MLflow metrics of a :func:`repeat_summary`: ``<stage>.repeats.score.mean`` / ``.low`` /
    ``.high``, the same per node (``<stage>.repeats.node.<n>.…``, with ``.flips``), and
    ``<stage>.repeats.flipped_examples``."""
    metrics: dict[str, float] = {f"{stage}.repeats.n": summary["repeats"],
                                 f"{stage}.repeats.flipped_examples": summary["flipped_examples"]}
    for key in ("mean", "low", "high"):
        if summary["score"][key] is not None:
            metrics[f"{stage}.repeats.score.{key}"] = summary["score"][key]
    for node, stats in summary["nodes"].items():
        for key in ("mean", "low", "high", "flips", "flipped_examples"):
            if stats.get(key) is not None:
                metrics[f"{stage}.repeats.node.{node}.{key}"] = stats[key]
    return metrics
