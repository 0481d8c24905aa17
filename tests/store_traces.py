"""Traces built by hand for store tests: the real ``runner.Trace`` and ``trace.NodeCall`` classes,
with exactly the contents a test needs to assert on."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import dspy

from experiments.runner import Trace
from programs.trace import NodeCall

DAY1 = datetime(2026, 3, 1, 9, 30, tzinfo=UTC)
DAY2 = datetime(2026, 3, 2, 23, 59, tzinfo=UTC)


def call(node: str, position: int, output: Any, *, field: str | None = None, inputs: dict | None = None,
         error: str | None = None, seconds: float = 0.1, prompt_tokens: int = 100, completion_tokens: int = 10,
         demos: list | None = None) -> NodeCall:
    """One node call; ``output=None`` with an ``error`` is a call that raised."""
    field = field or ("category" if node == "classify" else node)
    return NodeCall(node=node, kind="classifier" if node == "classify" else "writer", position=position,
                    inputs=inputs or {"message": "m"}, outputs=None if output is None else {field: output},
                    output_field=field, seconds=seconds, lm_calls=1, prompt_tokens=prompt_tokens,
                    completion_tokens=completion_tokens, error=error, lm_error=False, demos=demos or [])


def triage_trace(trace_id: str, message: str, category: str | None, reply: str | None, *,
                 at: datetime = DAY1, error: str | None = None, error_kind: str | None = None,
                 pipeline: str = "triage", seconds: tuple[float, float] = (0.1, 0.2)) -> Trace:
    """A triage trace: classify then reply; ``category=None`` means classify raised (no reply call)."""
    failed = category is None
    error = (error or "LMError: the LM did not answer") if failed else None
    calls = [call("classify", 0, category, inputs={"message": message}, seconds=seconds[0], error=error)]
    if category is not None:
        calls.append(call("reply", 1, reply, inputs={"message": message, "category": category}, seconds=seconds[1]))
    prediction = dspy.Prediction(category=category, reply=reply) if category is not None else None
    return Trace(trace_id=trace_id, pipeline=pipeline, program_version="v1", inputs={"message": message},
                 prediction=prediction, calls=calls, error=error, error_kind=(error_kind or "lm") if failed else None,
                 seconds=sum(seconds), started_at=at)
