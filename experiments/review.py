"""Human review over the flywheel store: the queue, one item's whole trace, and saving a review.

Everything here reads and writes the store's own tables (``traces``, ``node_calls``,
``verdicts``, ``labels``, ``corrections``): the store stays the one place optimizers read, and
nothing is copied elsewhere. The browser page (:mod:`experiments.review_page`) is a thin layer
over these functions.

The queue, in this order:

1. **Disagreements**: traces where the latest human label on a node call says the opposite of
   the latest judge verdict on it (same rubric, or a label given for no rubric in particular).
   A disagreement stays first until a second human label confirms the first (or flips it, which
   ends the disagreement): one more look, then it counts as reviewed.
2. **Unreviewed** traces (no human label yet), the lowest validator score first (rule and judge
   verdicts; the minimum over the trace's node calls), then the newest.
3. **Reviewed** traces, the newest first (shown with ``status=all``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from experiments.alignment import PAIRS_CTE
from programs.errors import UserError

__all__ = ["QueueFilters", "QueueItem", "ReviewInput", "load_item", "options", "queue", "save_review"]

TIER_NAMES = {1: "disagreement", 2: "unreviewed", 3: "reviewed"}

# A disagreement stays open until a second human label says the same as the first (or flips it).
_PAIRS = PAIRS_CTE + """,
open_disagreement AS (
    SELECT trace_id, call_id FROM pairs WHERE judge_passed <> human_passed AND same_opinion < 2)
"""

_QUEUE = f"""
WITH {_PAIRS},
scored AS (
    SELECT trace_id, min(score) AS min_score FROM verdicts
    WHERE source <> 'human' AND coalesce(counted, TRUE) AND score IS NOT NULL GROUP BY trace_id),
reviewed AS (SELECT DISTINCT trace_id FROM labels),
items AS (
    SELECT t.trace_id, t.pipeline, t.inputs, t.error, t.error_kind, t.created_at, s.min_score,
           CASE WHEN t.trace_id IN (SELECT trace_id FROM open_disagreement) THEN 1
                WHEN t.trace_id NOT IN (SELECT trace_id FROM reviewed) THEN 2 ELSE 3 END AS tier
    FROM traces t LEFT JOIN scored s USING (trace_id)
    WHERE {{where}})
SELECT * FROM items WHERE tier <= ?
ORDER BY tier, CASE WHEN tier < 3 THEN min_score END ASC NULLS LAST, created_at DESC, trace_id
LIMIT ?
"""


@dataclass(frozen=True)
class QueueFilters:
    """What the reviewer narrows the queue to; empty fields do not filter.

    Attributes:
        pipeline: Traces of this pipeline.
        node: Traces with a call of this node.
        validator: Traces with a verdict of this validator (a rule or a judge rubric).
        since: Traces created on or after this day (UTC).
        until: Traces created on or before this day (UTC).
        status: ``open`` (disagreements and unreviewed traces) or ``all``.
    """

    pipeline: str = ""
    node: str = ""
    validator: str = ""
    since: date | None = None
    until: date | None = None
    status: str = "open"

    @classmethod
    def from_query(cls, query: Mapping[str, str]) -> QueueFilters:
        """Filters from URL query parameters; a malformed date or status is a UserError."""
        def day(name: str) -> date | None:
            text = (query.get(name) or "").strip()
            if not text:
                return None
            try:
                return date.fromisoformat(text)
            except ValueError:
                raise UserError(f"filter {name}={text!r} is not a date; use YYYY-MM-DD") from None

        status = (query.get("status") or "open").strip()
        if status not in ("open", "all"):
            raise UserError(f"filter status={status!r} is not 'open' or 'all'")
        return cls(pipeline=(query.get("pipeline") or "").strip(), node=(query.get("node") or "").strip(),
                   validator=(query.get("validator") or "").strip(), since=day("since"), until=day("until"),
                   status=status)

    def as_query(self) -> dict[str, str]:
        """The non-empty filters as URL query parameters."""
        values = {"pipeline": self.pipeline, "node": self.node, "validator": self.validator,
                  "since": self.since.isoformat() if self.since else "",
                  "until": self.until.isoformat() if self.until else "",
                  "status": "" if self.status == "open" else self.status}
        return {k: v for k, v in values.items() if v}

    def sql(self) -> tuple[str, list[Any]]:
        clauses, params = ["TRUE"], []
        if self.pipeline:
            clauses.append("t.pipeline = ?")
            params.append(self.pipeline)
        if self.node:
            clauses.append("t.trace_id IN (SELECT trace_id FROM node_calls WHERE node = ?)")
            params.append(self.node)
        if self.validator:
            clauses.append("t.trace_id IN (SELECT trace_id FROM verdicts WHERE validator = ?)")
            params.append(self.validator)
        if self.since:
            clauses.append("CAST(timezone('UTC', t.created_at) AS DATE) >= ?")
            params.append(self.since)
        if self.until:
            clauses.append("CAST(timezone('UTC', t.created_at) AS DATE) <= ?")
            params.append(self.until)
        return " AND ".join(clauses), params


@dataclass(frozen=True)
class QueueItem:
    """One trace in the queue."""

    trace_id: str
    pipeline: str
    tier: int
    min_score: float | None
    created_at: datetime
    preview: str
    error: str | None

    @property
    def reason(self) -> str:
        if self.tier == 1:
            return "judge and human disagree"
        if self.tier == 2:
            return "unreviewed" if self.min_score is None else f"unreviewed, lowest score {self.min_score:.2f}"
        return "reviewed"


def _json(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def _preview(inputs: Any, limit: int = 90) -> str:
    inputs = _json(inputs)
    if isinstance(inputs, Mapping):
        text = " · ".join(str(v) for v in inputs.values())
    else:
        text = "" if inputs is None else str(inputs)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def queue(store: Any, filters: QueueFilters = QueueFilters(), *, limit: int = 200) -> list[QueueItem]:
    """The review queue under ``filters``, in review order (see the module docstring)."""
    where, params = filters.sql()
    max_tier = 2 if filters.status == "open" else 3
    rows = store.query(_QUEUE.format(where=where), [*params, max_tier, limit])
    return [QueueItem(trace_id=r["trace_id"], pipeline=r["pipeline"] or "", tier=int(r["tier"]),
                      min_score=r["min_score"], created_at=r["created_at"], preview=_preview(r["inputs"]),
                      error=r["error"]) for r in rows]


def options(store: Any) -> dict[str, list[str]]:
    """The values the filters can take: pipelines, nodes and validators present in the store."""
    def values(sql: str) -> list[str]:
        return [r["v"] for r in store.query(sql, []) if r["v"]]

    return {"pipeline": values("SELECT DISTINCT pipeline AS v FROM traces ORDER BY v"),
            "node": values("SELECT DISTINCT node AS v FROM node_calls ORDER BY v"),
            "validator": values("SELECT DISTINCT validator AS v FROM verdicts ORDER BY v")}


@dataclass
class CallView:
    """One node call of an item, with everything judged and said about it."""

    call_id: str
    node: str
    kind: str
    position: int
    inputs: Any
    outputs: Any
    output_field: str
    error: str | None
    verdicts: list[dict[str, Any]] = field(default_factory=list)
    labels: list[dict[str, Any]] = field(default_factory=list)
    corrections: list[dict[str, Any]] = field(default_factory=list)
    disagreement: bool = False

    @property
    def output(self) -> Any:
        return self.outputs.get(self.output_field) if isinstance(self.outputs, Mapping) else None

    @property
    def graded(self) -> bool:
        """A judge gave this call a graded score (score mode): the reviewer may answer 1-5."""
        return any(v["source"] == "judge" and isinstance(v["details"], Mapping) and "judge_score" in v["details"]
                   for v in self.verdicts)

    @property
    def failed_first(self) -> bool:
        return any(v["passed"] is False and v["counted"] is not False for v in self.verdicts) or bool(self.error)


@dataclass
class ItemView:
    """One trace as the reviewer sees it."""

    trace: dict[str, Any]
    calls: list[CallView]
    trace_verdicts: list[dict[str, Any]]
    trace_labels: list[dict[str, Any]]
    focus: str | None

    @property
    def first_failure(self) -> str | None:
        """The call_id of the first node call (in order) that failed a check or raised."""
        return next((c.call_id for c in self.calls if c.failed_first), None)


def load_item(store: Any, trace_id: str) -> ItemView | None:
    """The whole trace ``trace_id``: every node call with its verdicts, labels and corrections.

    The focus (the call the reviewer's label applies to unless they pick another) is the call
    where the judge and the human disagree, else the lowest-scored call, else the last one.
    """
    traces = store.query("SELECT * FROM traces WHERE trace_id = ?", [trace_id])
    if not traces:
        return None
    trace = dict(traces[0])
    trace["inputs"], trace["outputs"] = _json(trace["inputs"]), _json(trace["outputs"])
    calls = [CallView(call_id=r["call_id"], node=r["node"], kind=r["kind"] or "", position=r["position"],
                      inputs=_json(r["inputs"]), outputs=_json(r["outputs"]), output_field=r["output_field"] or "",
                      error=r["error"])
             for r in store.query("SELECT * FROM node_calls WHERE trace_id = ? ORDER BY position, created_at",
                                  [trace_id])]
    by_id = {c.call_id: c for c in calls}
    trace_verdicts, trace_labels = [], []
    for r in store.query("SELECT * FROM verdicts WHERE trace_id = ? ORDER BY created_at", [trace_id]):
        row = dict(r)
        row["details"] = _json(row["details"])
        by_id[row["call_id"]].verdicts.append(row) if row["call_id"] in by_id else trace_verdicts.append(row)
    for r in store.query("SELECT * FROM labels WHERE trace_id = ? ORDER BY created_at", [trace_id]):
        by_id[r["call_id"]].labels.append(dict(r)) if r["call_id"] in by_id else trace_labels.append(dict(r))
    for r in store.query("SELECT * FROM corrections WHERE trace_id = ? ORDER BY created_at", [trace_id]):
        row = dict(r)
        row["outputs"] = _json(row["outputs"])
        if row["call_id"] in by_id:
            by_id[row["call_id"]].corrections.append(row)
    disagreeing = {r["call_id"] for r in store.query(f"WITH {_PAIRS} SELECT call_id FROM open_disagreement "
                                                     "WHERE trace_id = ?", [trace_id])}
    for call in calls:
        call.disagreement = call.call_id in disagreeing
    focus = next((c.call_id for c in calls if c.disagreement), None)
    if focus is None:
        scored = [(min(v["score"] for v in c.verdicts if v["score"] is not None), c.position, c.call_id)
                  for c in calls if any(v["score"] is not None and v["source"] != "human" for v in c.verdicts)]
        focus = min(scored)[2] if scored else (calls[-1].call_id if calls else None)
    return ItemView(trace=trace, calls=calls, trace_verdicts=trace_verdicts, trace_labels=trace_labels, focus=focus)


@dataclass(frozen=True)
class ReviewInput:
    """What the reviewer submitted for one trace.

    Attributes:
        trace_id: The trace.
        call_id: The node call the label is about (None: the trace as a whole).
        reviewer: Who reviewed.
        passed: Pass or fail; None with ``score`` (then ``score >= 3`` passes) or when only
            corrections are saved.
        score: 1-5 where the rubric is graded, else None.
        comment: The reviewer's text review ("" for none).
        validator: The rubric the label answers (the judge's validator on that call), or None.
        corrections: ``{call_id: corrected output text}`` for any node call of the trace.
    """

    trace_id: str
    call_id: str | None
    reviewer: str
    passed: bool | None = None
    score: int | None = None
    comment: str = ""
    validator: str | None = None
    corrections: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ReviewInput:
        """Parses a submitted review; a bad field is a UserError naming it."""
        def text(name: str, required: bool = False) -> str:
            value = data.get(name)
            if value is None:
                value = ""
            if not isinstance(value, str):
                raise UserError(f"review field {name!r} must be text, got {type(value).__name__}")
            if required and not value.strip():
                raise UserError(f"review field {name!r} is empty; fill it in")
            return value

        passed = data.get("passed")
        if passed is not None and not isinstance(passed, bool):
            raise UserError(f"review field 'passed' must be true, false or null, got {passed!r}")
        score = data.get("score")
        if score is not None and (isinstance(score, bool) or score not in (1, 2, 3, 4, 5)):
            raise UserError(f"review field 'score' must be 1..5 or null, got {score!r}")
        if passed is None and score is not None:
            passed = score >= 3
        corrections = data.get("corrections") or {}
        if not isinstance(corrections, Mapping) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in corrections.items()):
            raise UserError("review field 'corrections' must map call ids to corrected output text")
        if passed is None and not corrections:
            raise UserError("a review needs pass/fail, a 1-5 score or a corrected output")
        return cls(trace_id=text("trace_id", True), call_id=text("call_id") or None,
                   reviewer=text("reviewer", True).strip(), passed=passed, score=score,
                   comment=text("comment").strip(), validator=text("validator") or None,
                   corrections=dict(corrections))


def save_review(store: Any, review: ReviewInput) -> dict[str, Any]:
    """Writes one review: a label (when pass/fail or a score was given) and one correction per
    corrected node call, all stamped with the reviewer and the same UTC time.

    Args:
        store: An open, writable store.
        review: The submitted review.

    Returns:
        ``{"label_id": ... or None, "correction_ids": [...]}``.

    Raises:
        UserError: The trace or a node call does not exist, or a correction is empty.
    """
    calls = {r["call_id"]: r for r in store.query(
        "SELECT call_id, node, output_field, outputs FROM node_calls WHERE trace_id = ?", [review.trace_id])}
    if not store.query("SELECT 1 AS x FROM traces WHERE trace_id = ?", [review.trace_id]):
        raise UserError(f"trace {review.trace_id!r} is not in the store (was it deleted?); reload the queue")
    for call_id in ([review.call_id] if review.call_id else []) + list(review.corrections):
        if call_id not in calls:
            raise UserError(f"node call {call_id!r} is not part of trace {review.trace_id!r}; reload the page")
    for call_id, text in review.corrections.items():
        if not text.strip():
            raise UserError(f"the corrected output of node {calls[call_id]['node']!r} is empty; write it or undo "
                            "the edit")
    now = datetime.now(UTC)  # the label and its corrections carry one time
    label_id = None
    if review.passed is not None:
        node = calls[review.call_id]["node"] if review.call_id else None
        label_id = store.add_label(trace_id=review.trace_id, call_id=review.call_id, node=node,
                                   validator=review.validator, reviewer=review.reviewer, passed=review.passed,
                                   score=review.score, comment=review.comment or None, created_at=now)
    correction_ids = []
    for call_id, text in review.corrections.items():
        call = calls[call_id]
        outputs = dict(_json(call["outputs"]) or {})
        outputs[call["output_field"] or "output"] = text
        correction_ids.append(store.add_correction(
            trace_id=review.trace_id, call_id=call_id, node=call["node"], reviewer=review.reviewer,
            outputs=outputs, comment=None, created_at=now))  # the text review lives on the label, once
    return {"label_id": label_id, "correction_ids": correction_ids}

