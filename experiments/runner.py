"""The one core that runs a program on one input: compile, evaluate and recording all call it.

``run_traced`` runs input guards (when given), then the program, and returns a :class:`Trace`:
the prediction, every node call read from DSPy's trace (``programs.trace``), the error if the
program raised, and what kind of error it was. An LM that did not answer (``error_kind="lm"``)
is not a wrong answer: callers leave it out of scores. A malformed answer is the model's answer
and is scored like any other.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import dspy

from programs.errors import InputRejectedError
from programs.trace import NodeCall, _plain, capture, is_lm_failure

__all__ = ["ErrorKind", "Trace", "program_version", "run_traced"]

ErrorKind = Literal["lm", "program", "rejected"]


@dataclass
class Trace:
    """One run of a program on one input.

    Attributes:
        trace_id: A new unique id (hex).
        pipeline: The pipeline spec or name the caller gave.
        program_version: :func:`program_version` of the program that ran.
        inputs: The inputs the program was called with.
        prediction: What the program returned, None when it raised.
        calls: Every node call, in order, including those before a failure.
        error: ``"TypeName: message"`` when the program raised or a guard blocked the input.
        error_kind: ``lm`` (the LM did not answer), ``program`` (any other exception), ``rejected``
            (an input guard blocked the input; no LM call was made), or None.
        seconds: Wall time.
        started_at: When the run started (UTC).
        guard_verdicts: The input guards' verdicts by guard name, when guards ran.
        exception: The exception itself, for callers that re-raise it (not serialised).
    """

    trace_id: str
    pipeline: str
    program_version: str
    inputs: dict[str, Any]
    prediction: Any
    calls: list[NodeCall]
    error: str | None = None
    error_kind: ErrorKind | None = None
    seconds: float = 0.0
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    guard_verdicts: dict[str, Any] = field(default_factory=dict)
    exception: BaseException | None = field(default=None, repr=False)

    @property
    def outputs(self) -> dict[str, Any]:
        """The prediction's fields ({} when the program raised)."""
        if self.prediction is None or not hasattr(self.prediction, "items"):
            return {}
        return dict(self.prediction.items())

    def as_dict(self) -> dict[str, Any]:
        """JSON-able: ids, inputs, outputs, error, timing and every node call."""
        return {"trace_id": self.trace_id, "pipeline": self.pipeline, "program_version": self.program_version,
                "inputs": _plain(self.inputs), "outputs": _plain(self.outputs), "error": self.error,
                "error_kind": self.error_kind, "seconds": self.seconds, "started_at": self.started_at.isoformat(),
                "calls": [c.as_dict() for c in self.calls]}


def program_version(program: dspy.Module) -> str:
    """A short hash of the program's state (instructions, demos, retrieval pools): two programs
    with the same version answer the same prompts."""
    try:
        state = program.dump_state()
    except Exception:  # a module DSPy cannot dump: its class is the best we know
        state = {"class": f"{type(program).__module__}.{type(program).__qualname__}"}
    text = json.dumps(state, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def run_traced(program: dspy.Module, inputs: Mapping[str, Any], *, pipeline_name: str = "",
               guards: Any = None, version: str | None = None) -> Trace:
    """Runs ``program(**inputs)`` and returns its trace; never raises for the program's errors.

    Args:
        program: The pipeline (or any DSPy module whose predictors are pipec nodes).
        inputs: Keyword arguments for the program.
        pipeline_name: Recorded in the trace.
        guards: ``metrics.Guards`` run before the program; a blocked input is not sent to the LM.
        version: The program's version when the caller knows it (computing it hashes the state).
    """
    inputs = dict(inputs)
    started_at = datetime.now(UTC)
    start = time.perf_counter()
    trace_id = uuid.uuid4().hex
    version = version if version is not None else program_version(program)
    guard_verdicts: dict[str, Any] = {}
    if guards is not None:
        report = guards.check(inputs)
        guard_verdicts = dict(report.verdicts)
        if report.blocked:
            error = InputRejectedError("; ".join(report.reasons), reasons=report.reasons)
            return Trace(trace_id, pipeline_name, version, inputs, None, [], f"InputRejectedError: {error}",
                         "rejected", time.perf_counter() - start, started_at, guard_verdicts, error)
    prediction, error, kind, failure = None, None, None, None
    with capture(program) as calls:
        try:
            prediction = program(**inputs)
        except Exception as exc:  # the trace says what went wrong; callers decide what it means
            error, failure = f"{type(exc).__name__}: {exc}", exc
    if failure is not None:
        # The LM's failure, even when the pipeline wrapped it in an exception of its own.
        lm_failed = (is_lm_failure(failure) or is_lm_failure(failure.__cause__ or failure)
                     or any(c.lm_error for c in calls))
        kind = "lm" if lm_failed else "program"
    return Trace(trace_id, pipeline_name, version, inputs, prediction, calls, error, kind,
                 time.perf_counter() - start, started_at, guard_verdicts, failure)

