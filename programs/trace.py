"""Node calls: what each node of a pipeline produced on one call, read from DSPy's trace.

DSPy appends ``(predictor, inputs, prediction)`` to ``dspy.settings.trace`` every time a
predictor runs (its bootstrap reads demos from it). :func:`capture` turns that trace on for the
duration of a call and maps each entry back to the node that produced it, by the node's name in
the program (``named_predictors()``), as DSPy's bootstrap does. What the trace does not hold (how
long the call took, its LM calls and tokens, the error when it failed, the demos it was shown)
the node adds itself (``Node.forward``), so a node is judged on what it produced, whatever the
pipeline's ``forward`` returns: a renamed, dropped or repeated output is still seen.

Example:
    >>> with capture(pipeline) as calls:  # doctest: +SKIP
    ...     pipeline(message="where is my parcel?")
    >>> [(c.node, c.output) for c in calls]  # doctest: +SKIP
    [('classify', 'shipping'), ('reply', 'It left our warehouse today.')]
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import dspy

__all__ = ["EVALUATIONS_ONLY", "NodeCall", "attach", "calls_from_dspy_trace", "capture", "is_lm_failure",
           "node_calls", "record_node_call"]

_RECORDER_KEY = "pipec_recorder"  # the dspy.settings key: DSPy copies settings into its worker threads
_ATTACHED = "_pipec_node_calls"  # where a pipeline's Prediction carries its calls
_NAME = "_pipec_name"  # a node's name in the program that last ran it
# A DSPy callback with this attribute set listens to evaluations only (``dspy.Evaluate``): inside a
# captured program call it is left out of ``dspy.settings.callbacks``. DSPy runs every active
# callback around every module, adapter and LM call (``inspect.getcallargs`` and a uuid each),
# about a millisecond per LM call for a callback that ignores them all.
EVALUATIONS_ONLY = "pipec_evaluations_only"


@dataclass
class NodeCall:
    """One call of one node.

    Attributes:
        node: The node's name in the pipeline (its attribute name).
        kind: ``classifier``, ``writer``, ``codegen`` (or a user-defined kind).
        position: The order of the call within its trace, from 0.
        inputs: The node's input fields as it was called.
        outputs: The node's output fields, None when the call failed.
        output_field: The name of the node's one output field.
        seconds: Wall time of the call.
        lm_calls: LM calls that reached a model (cache hits excluded).
        prompt_tokens: Prompt tokens of those calls.
        completion_tokens: Completion tokens of those calls.
        error: ``"TypeName: message"`` when the call raised.
        lm_error: The failure was the LM's (provider, transport, key), not the program's.
        demos: The demos the call was shown (fixed, or retrieved for this call).
    """

    node: str
    kind: str
    position: int
    inputs: dict[str, Any]
    outputs: dict[str, Any] | None
    output_field: str
    seconds: float = 0.0
    lm_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None
    lm_error: bool = False
    demos: list[dict[str, Any]] = field(default_factory=list)

    @property
    def output(self) -> Any:
        """The value of the node's output field, None when the call failed."""
        return None if self.outputs is None else self.outputs.get(self.output_field)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-able dict of every attribute."""
        return {
            "node": self.node, "kind": self.kind, "position": self.position, "inputs": _plain(self.inputs),
            "outputs": _plain(self.outputs), "output_field": self.output_field, "seconds": self.seconds,
            "lm_calls": self.lm_calls, "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens, "error": self.error, "lm_error": self.lm_error,
            "demos": _plain(self.demos),
        }


def _plain(value: Any) -> Any:
    """JSON-able data: Examples and Predictions as dicts, other objects as strings."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if hasattr(value, "toDict"):
        return _plain(value.toDict())
    if hasattr(value, "items"):
        return {str(k): _plain(v) for k, v in value.items()}
    return str(value)


def is_lm_failure(exc: BaseException) -> bool:
    """Whether ``exc`` means the LM did not answer (provider, transport, key), as opposed to a
    program error or a malformed answer (which is the model's answer, scored as such)."""
    from dspy.utils.exceptions import LMError as DSPyLMError

    from programs.errors import LMError

    return isinstance(exc, LMError | DSPyLMError)


def _names(program: dspy.Module) -> dict[int, str]:
    """``{id(predictor): name}``, the names ``named_predictors()`` gives; each predictor also keeps
    its name, so a copy of the program (optimizers run candidates that are deep copies) still
    maps its calls to the right node.

    The walk is ``named_parameters()``'s, minus what cannot hold a predictor: a module's call
    ``history`` (DSPy keeps up to 10,000 entries per module, and walking them cost milliseconds
    per call in a long-running recorder) and lists of plain values.
    """
    from dspy.predict.parameter import Parameter

    names: dict[int, str] = {}

    def add(name: str, value: Any) -> None:
        if isinstance(value, Parameter):
            if isinstance(value, dspy.Predict) and id(value) not in names:
                names[id(value)] = name
                if getattr(value, _NAME, None) != name:
                    setattr(value, _NAME, name)
        elif isinstance(value, dspy.Module):
            if not getattr(value, "_compiled", False):
                walk(value, f"{name}.")
        elif isinstance(value, list | tuple):
            if value and isinstance(value[0], Parameter | dspy.Module):
                for index, item in enumerate(value):
                    add(f"{name}[{index}]", item)
        elif isinstance(value, dict) and value and isinstance(next(iter(value.values())), Parameter | dspy.Module):
            for key, item in value.items():
                add(f"{name}['{key}']", item)

    def walk(module: Any, prefix: str) -> None:
        for name, value in vars(module).items():
            if name != "history":
                add(f"{prefix}{name}", value)

    if isinstance(program, Parameter):
        add("self", program)
    walk(program, "")
    return names


@dataclass
class _Raw:
    """A node call before its name is known: names depend on which program captures it."""

    node: Any
    inputs: dict[str, Any]
    outputs: dict[str, Any] | None
    seconds: float
    usage: tuple[int, int, int]
    error: str | None
    lm_error: bool
    demos: list[dict[str, Any]]


class _Recorder:
    """Collects the node calls of one capture (and hands them to an enclosing capture too)."""

    def __init__(self, program: dspy.Module, parent: _Recorder | None) -> None:
        self.names = _names(program)
        self.parent = parent
        self.raw: list[_Raw] = []
        self.lock = threading.Lock()

    def add(self, raw: _Raw) -> None:
        with self.lock:
            self.raw.append(raw)
        if self.parent is not None:
            self.parent.add(raw)

    def calls(self) -> list[NodeCall]:
        with self.lock:
            raws = list(self.raw)
        calls = []
        for position, raw in enumerate(raws):
            name = self.names.get(id(raw.node)) or getattr(raw.node, _NAME, None) or type(raw.node).__name__
            calls.append(NodeCall(
                node=name, kind=getattr(raw.node, "kind", "node"), position=position, inputs=raw.inputs,
                outputs=raw.outputs, output_field=next(iter(raw.node.signature.output_fields)),
                seconds=raw.seconds, lm_calls=raw.usage[0], prompt_tokens=raw.usage[1],
                completion_tokens=raw.usage[2], error=raw.error, lm_error=raw.lm_error, demos=raw.demos))
        return calls


@contextmanager
def capture(program: dspy.Module) -> Iterator[list[NodeCall]]:
    """Captures the node calls ``program`` makes inside the block.

    The yielded list is filled when the block ends (also when it raises), so calls that ran
    before a failure are kept. Captures nest: an enclosing capture sees the inner one's calls.
    Callbacks marked :data:`EVALUATIONS_ONLY` are off inside the block.
    """
    parent = dspy.settings.get(_RECORDER_KEY)
    recorder = _Recorder(program, parent)
    result: list[NodeCall] = []
    overrides: dict[str, Any] = {_RECORDER_KEY: recorder}
    if dspy.settings.trace is None:  # an optimizer's own trace (bootstrap) is left as it is
        overrides["trace"] = []
    callbacks = dspy.settings.get("callbacks")
    if callbacks and any(getattr(c, EVALUATIONS_ONLY, False) for c in callbacks):
        overrides["callbacks"] = [c for c in callbacks if not getattr(c, EVALUATIONS_ONLY, False)]
    try:
        with dspy.context(**overrides):
            yield result
    finally:
        result.extend(recorder.calls())


def active() -> bool:
    """Whether a capture is in force on this thread (nodes record only then)."""
    return dspy.settings.get(_RECORDER_KEY) is not None


class _NodeUsage:
    """The usage tracker in force during one node call: counts its LM calls and passes every
    entry on to the tracker that was in force before (an evaluation's, DSPy's own)."""

    def __init__(self, parent: Any) -> None:
        self.parent = parent
        self.calls = self.prompt_tokens = self.completion_tokens = 0

    def __deepcopy__(self, memo: dict) -> _NodeUsage:
        return self  # DSPy copies trackers into worker threads; counts stay in one place

    def add_usage(self, lm: str, usage_entry: dict[str, Any]) -> None:
        self.calls += 1
        self.prompt_tokens += int(usage_entry.get("prompt_tokens") or 0)
        self.completion_tokens += int(usage_entry.get("completion_tokens") or 0)
        if self.parent is not None:
            self.parent.add_usage(lm, usage_entry)


def _demo_dicts(demos: Any) -> list[dict[str, Any]]:
    plain = [_plain(d) for d in demos or ()]
    return [d if isinstance(d, dict) else {"demo": d} for d in plain]


def record_node_call(node: Any, kwargs: dict[str, Any], call: Any) -> Any:
    """Runs ``call()`` (the node's prediction) and records it in the active capture.

    ``Node.forward`` calls this; without an active capture it is ``call()`` and nothing else.
    """
    recorder = dspy.settings.get(_RECORDER_KEY)
    if recorder is None:
        return call()
    trace = dspy.settings.trace
    mark = len(trace) if trace is not None else 0
    usage = _NodeUsage(dspy.settings.usage_tracker)
    inputs = {k: v for k, v in kwargs.items() if k in node.signature.input_fields}
    demos = _demo_dicts(kwargs["demos"] if "demos" in kwargs else node.demos)
    start = time.perf_counter()
    try:
        with dspy.context(usage_tracker=usage):
            prediction = call()
    except Exception as exc:
        recorder.add(_Raw(node, inputs, None, time.perf_counter() - start,
                          (usage.calls, usage.prompt_tokens, usage.completion_tokens),
                          f"{type(exc).__name__}: {exc}", is_lm_failure(exc), demos))
        raise
    seconds = time.perf_counter() - start
    # What the node produced, as DSPy's trace holds it (the entry this call appended).
    produced = prediction
    if trace is not None:
        for predictor, traced_inputs, traced in reversed(trace[mark:]):
            if predictor is node:
                produced = traced
                inputs = {k: v for k, v in traced_inputs.items() if k in node.signature.input_fields} or inputs
                break
    outputs = {k: produced.get(k) for k in node.signature.output_fields} if hasattr(produced, "get") else None
    recorder.add(_Raw(node, inputs, outputs, seconds, (usage.calls, usage.prompt_tokens, usage.completion_tokens),
                      None, False, demos))
    return prediction


def calls_from_dspy_trace(program: dspy.Module, trace: Any) -> list[NodeCall]:
    """Node calls from a DSPy trace (``[(predictor, inputs, prediction), ...]``), each entry mapped
    to its node's name in ``program``; entries of predictors outside the program are skipped."""
    names = _names(program)
    calls = []
    for predictor, inputs, prediction in trace or ():
        name = names.get(id(predictor)) or getattr(predictor, _NAME, None)
        if name is None:
            continue
        fields = predictor.signature
        outputs = {k: prediction.get(k) for k in fields.output_fields} if hasattr(prediction, "get") else None
        calls.append(NodeCall(node=name, kind=getattr(predictor, "kind", "node"), position=len(calls),
                              inputs={k: v for k, v in inputs.items() if k in fields.input_fields},
                              outputs=outputs, output_field=next(iter(fields.output_fields))))
    return calls


def attach(prediction: Any, calls: list[NodeCall]) -> None:
    """Attaches ``calls`` to a pipeline's Prediction, where :func:`node_calls` finds them."""
    if prediction is not None:
        try:
            object.__setattr__(prediction, _ATTACHED, calls)
        except (AttributeError, TypeError):  # a prediction type that takes no attributes
            pass


def node_calls(prediction: Any) -> list[NodeCall] | None:
    """The node calls attached to a pipeline's Prediction, None when it carries none."""
    return getattr(prediction, _ATTACHED, None) if prediction is not None else None
