"""One budget for everything an optimizer spends: LM calls, tokens, and dollars.

``Budget`` counts every LM call made inside :meth:`Budget.track` (the task LM, the prompt-writing
LM, any judge LM: all DSPy LM calls on every thread), and refuses a call *before* it starts when
it would go over a cap. An optimizer therefore never spends more than it was given; when the
budget runs out it stops and returns the best program it has.

What counts:

- ``max_lm_calls``: calls that reached a model. A cache hit costs nothing, but while the cap is
  reached even a cache hit is refused (the gate runs before the cache lookup). The cap holds
  exactly, on every thread: each call in flight holds its place.
- ``max_tokens``: prompt + completion tokens, as the provider reports them.
- ``max_cost``: US dollars, priced with LiteLLM's bundled (offline) price map
  (``litellm.cost_per_token``). The embedded LM and models without a listed price cost 0; those
  are named in ``unpriced`` and no dollar cap can hold them back.

How the token and dollar caps hold: before each call the gate *reserves* what the call can
cost at most, and refuses the call when what was spent, plus what the calls still in flight
reserved, plus this reservation would cross a cap (a call that does not fit only because of
calls in flight on other threads waits for them first: their reservations may be larger than
what they spend). When the call's usage arrives it replaces the reservation. A reservation is

- the prompt: its text's UTF-8 bytes times the model's tokens per byte, plus 8 tokens per
  message (the chat template). Before the model's first answer the ratio is 1 (no token of a
  byte-level or SentencePiece tokenizer is shorter than a byte); after it, the largest ratio the
  model has shown so far (its reported prompt tokens over the prompt's bytes, so what the
  provider adds to the text, such as a response schema, is in the ratio);
- the completion: the call's ``max_tokens`` (its own or the LM's), else the longest completion
  the model has returned so far;
- in dollars, both priced for the model (0 for a model without a price).

So a cap holds whenever each call spends no more than its reservation: the LM has
``max_tokens`` (pipec's embedded LM has 256; ``$PIPEC_LM_MAX_TOKENS`` sets it for ``--lm``
models) and no prompt tokenizes denser than the model's densest prompt before it (e.g. a first
Japanese prompt after English ones, or a prompt shorter than any before it on a provider that
adds many tokens of its own). A call that spends more than its reservation can cross the cap by
that excess; the next call is then refused, and ``overshoot`` (also in ``as_dict``) says by how
much the cap was crossed (0 while it held).

How a refusal stops the work: the gate raises :class:`BudgetStop`, which derives from
``BaseException`` so that no ``except Exception`` on the way (DSPy's adapter fallbacks, a judge's
retries, ``dspy.Evaluate``'s error counting) swallows it or scores it as a failed example. Code
that spends calls runs under :meth:`Budget.track` and catches it (optimizers turn it into
``programs.BudgetExhaustedError`` and stop); a half-finished evaluation is discarded.

Example:
    >>> budget = Budget(max_lm_calls=100, max_cost=0.50)
    >>> with budget.track():  # doctest: +SKIP
    ...     program(**inputs)
    >>> budget.calls, budget.remaining_calls  # doctest: +SKIP
    (2, 98)

Another optimizer can reuse it the same way (``from optimizers import Budget``): build one from
``--param max_lm_calls=... max_tokens=... max_cost=...``, run the work inside ``track()``, and ask
:meth:`affords` before starting something that costs a known number of calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

import dspy
from dspy.utils.callback import BaseCallback
from dspy.utils.usage_tracker import UsageTracker

from programs.errors import ConfigError

__all__ = ["Budget", "BudgetStop"]

logger = logging.getLogger(__name__)


class BudgetStop(BaseException):
    """Raised by the budget's gate before an LM call that would exceed a cap.

    A ``BaseException`` on purpose: see the module docstring. Catch it only around work run
    inside :meth:`Budget.track`.
    """


def _price(model: str, prompt_tokens: int, completion_tokens: int) -> float | None:
    """Dollars for one call from LiteLLM's bundled price map; None when the model has no price."""
    if model.startswith(("local/", "fake/")):  # the embedded LM and the test fakes are free
        return 0.0
    try:
        import litellm

        prompt_cost, completion_cost = litellm.cost_per_token(model=model, prompt_tokens=prompt_tokens,
                                                              completion_tokens=completion_tokens)
    except Exception:  # litellm raises a plain Exception for a model it has no price for
        return None
    return float(prompt_cost) + float(completion_cost)


class _Tracker(UsageTracker):
    """Usage tracker that charges the budget as each call's usage arrives, on any thread.

    DSPy's ParallelExecutor deep-copies the tracker into each worker; this one survives the copy
    as itself. Entries are also forwarded to the tracker that was in force before (the compile's
    own count), so nothing the optimizer spends goes unreported.
    """

    def __init__(self, budget: Budget, parent: Any) -> None:
        super().__init__()
        self.budget, self.parent = budget, parent

    def __deepcopy__(self, memo: dict) -> _Tracker:
        return self

    def add_usage(self, lm: str, usage_entry: dict[str, Any]) -> None:
        self.budget._charge(lm, usage_entry)
        if self.parent is not None:
            self.parent.add_usage(lm, usage_entry)


class _Gate(BaseCallback):
    """DSPy callback: refuses an LM call before it starts when it could go over a cap of any
    budget in force (nested ``track()`` blocks: the outer budgets first), and holds the call's
    reservations until its usage is charged (or it ends without usage). One gate serves every
    budget in force, so a refusal by one releases what the others had reserved."""

    def __init__(self, budgets: tuple[Budget, ...]) -> None:
        super().__init__()
        self.budgets = budgets

    def on_lm_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        held: list[Budget] = []
        try:
            for budget in self.budgets:
                budget._reserve(call_id, instance, inputs)  # raises BudgetStop
                held.append(budget)
        except BaseException:
            for budget in held:
                budget._release(call_id)
            raise

    def on_lm_end(self, call_id: str, outputs: Any, exception: BaseException | None = None) -> None:
        for budget in self.budgets:
            budget._release(call_id)


MESSAGE_TOKENS = 8  # chat-template tokens reserved per message (role markers, separators)
WAIT_SECONDS = 600.0  # longest a call waits for calls in flight to settle before it is refused


def _in_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _prompt_bytes(inputs: Mapping[str, Any]) -> tuple[int, int]:
    """``(UTF-8 bytes, messages)`` of an LM call's prompt: its messages' text (or prompt string).

    What a provider adds beyond the text (chat-template tokens, a response schema it puts in the
    prompt) shows up in the model's reported tokens per byte."""
    size, count = 0, 0
    for message in inputs.get("messages") or ():
        count += 1
        content = message.get("content") if isinstance(message, Mapping) else getattr(message, "content", message)
        if isinstance(content, str):
            size += len(content.encode("utf-8"))
        else:
            for part in content or ():
                text = part.get("text") if isinstance(part, Mapping) else getattr(part, "text", None)
                size += len((text if isinstance(text, str) else str(part)).encode("utf-8"))
    if isinstance(inputs.get("prompt"), str):
        count += 1
        size += len(inputs["prompt"].encode("utf-8"))
    return size, max(count, 1)


def _max_completion(instance: Any, inputs: Mapping[str, Any]) -> int | None:
    """The call's completion cap: its own ``max_tokens`` argument, else the LM's."""
    for source in (inputs.get("kwargs") or {}, getattr(instance, "kwargs", None) or {}):
        for name in ("max_tokens", "max_completion_tokens", "max_output_tokens"):
            value = source.get(name)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
    return None


class Budget:
    """Caps on what an optimizer may spend, and the count of what it has spent.

    Args:
        max_lm_calls: LM calls that reach a model; None for no cap.
        max_tokens: Prompt + completion tokens; None for no cap.
        max_cost: US dollars (LiteLLM's price map); None for no cap.

    Attributes:
        calls, prompt_tokens, completion_tokens, cost: Spent so far.
        unpriced: Models whose calls had no listed price (counted as 0 dollars).
        refused: How many calls the gate refused.

    Raises:
        ConfigError: A negative cap.
    """

    def __init__(self, max_lm_calls: int | None = None, max_tokens: int | None = None,
                 max_cost: float | None = None) -> None:
        for name, value in (("max_lm_calls", max_lm_calls), ("max_tokens", max_tokens), ("max_cost", max_cost)):
            if value is not None and (not isinstance(value, int | float) or isinstance(value, bool) or value < 0):
                raise ConfigError(f"--param {name}={value!r}: expected a number >= 0 (or leave it out for no cap)")
        self.max_lm_calls = None if max_lm_calls is None else int(max_lm_calls)
        self.max_tokens = None if max_tokens is None else int(max_tokens)
        self.max_cost = None if max_cost is None else float(max_cost)
        self.calls = self.prompt_tokens = self.completion_tokens = 0
        self.cost = 0.0
        self.unpriced: set[str] = set()
        self.refused = 0
        self._in_flight = 0
        self._reserved_tokens = 0
        self._reserved_cost = 0.0
        self._open: dict[str, tuple[int, float]] = {}  # call id -> (tokens, dollars) it reserved
        self._current = threading.local()  # the call this thread is making (its usage arrives on it)
        self._ratio: dict[str, float] = {}  # model -> largest reported prompt tokens per prompt byte
        self._completion: dict[str, int] = {}  # model -> longest completion reported
        self._largest_call_tokens = 0
        self._dearest_call = 0.0
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)  # a reservation ended or usage arrived

    # -- accounting ---------------------------------------------------------------------------

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def remaining_calls(self) -> int | None:
        """Calls left under ``max_lm_calls`` (None when uncapped)."""
        if self.max_lm_calls is None:
            return None
        return max(0, self.max_lm_calls - self.calls - self._in_flight)

    @property
    def overshoot(self) -> dict[str, float]:
        """How far spending went past each cap (0 where it held); see the module docstring."""
        return {"tokens": max(0, self.tokens - self.max_tokens) if self.max_tokens is not None else 0,
                "cost": round(max(0.0, self.cost - self.max_cost), 6) if self.max_cost is not None else 0.0}

    def affords(self, calls: int = 1) -> bool:
        """Whether ``calls`` more LM calls fit every cap, for planning (tokens and dollars judged by
        the largest call so far; the gate before each call judges the call itself)."""
        with self._lock:
            if self.max_lm_calls is not None and self.calls + self._in_flight + calls > self.max_lm_calls:
                return False
            if self.max_tokens is not None:
                spent = self.tokens + self._reserved_tokens
                if spent >= self.max_tokens or spent + calls * self._largest_call_tokens > self.max_tokens:
                    return False
            if self.max_cost is not None and (self.cost + self._reserved_cost + calls * self._dearest_call
                                              > self.max_cost):
                return False
            return True

    def affordable(self, calls_each: float, wanted: int) -> int:
        """How many of ``wanted`` units costing ``calls_each`` calls each fit the budget now."""
        if calls_each <= 0:
            return wanted
        count = wanted
        while count > 0 and not self.affords(math.ceil(count * calls_each)):
            count -= 1
        return count

    @property
    def exhausted(self) -> bool:
        """No further call fits."""
        return not self.affords(1)

    def estimate(self, model: str, inputs: Mapping[str, Any], instance: Any = None) -> tuple[int, float]:
        """``(tokens, dollars)`` an LM call can cost at most (see the module docstring); the
        dollars are 0 when the model has no price or no dollar cap is set.

        Args:
            model: The LM's model name (``dspy.LM.model``).
            inputs: The call's arguments as DSPy's callbacks see them (``messages``, ``prompt``,
                ``kwargs``).
            instance: The ``dspy.LM`` (its ``max_tokens``), if any.
        """
        return self._estimate(model, *_prompt_bytes(inputs), instance, inputs)

    def _estimate(self, model: str, size: int, messages: int, instance: Any, inputs: Mapping[str, Any]
                  ) -> tuple[int, float]:
        with self._lock:
            prompt = math.ceil(size * self._ratio.get(model, 1.0)) + MESSAGE_TOKENS * messages
            completion = _max_completion(instance, inputs)
            if completion is None:
                completion = self._completion.get(model, max(self._completion.values(), default=0))
        dollars = 0.0
        if self.max_cost is not None:
            dollars = _price(model, prompt, completion) or 0.0
        return prompt + completion, dollars

    def _over(self, tokens: int, dollars: float) -> str | None:
        """Why one more call reserving ``tokens`` and ``dollars`` could cross a cap (None: it fits)."""
        if self.max_lm_calls is not None and self.calls + self._in_flight + 1 > self.max_lm_calls:
            return ""
        if self.max_tokens is not None and (self.tokens >= self.max_tokens
                                            or self.tokens + self._reserved_tokens + tokens > self.max_tokens):
            return f"; the next call could take up to {tokens} tokens"
        if self.max_cost is not None and (self.cost + self._reserved_cost + dollars > self.max_cost
                                          or 0 < self.max_cost <= self.cost):
            return f"; the next call could cost up to ${dollars:.4f}"
        return None

    def _reserve(self, call_id: str, instance: Any = None, inputs: Mapping[str, Any] | None = None) -> None:
        """Holds a place for one call, or raises BudgetStop when it could cross a cap.

        While calls on other threads are in flight, a call that does not fit waits for them (up
        to ``WAIT_SECONDS``): their reservations may be larger than what they spend. It is refused
        when it still does not fit with nothing else in flight (or inside an event loop, where
        waiting would block the calls it waits for).
        """
        model = str(getattr(instance, "model", "") or "")
        capped = (self.max_tokens is not None or self.max_cost is not None) and inputs is not None
        size, messages = _prompt_bytes(inputs) if capped else (0, 0)
        stack = getattr(self._current, "calls", None)
        if stack is None:
            stack = self._current.calls = []
        may_wait = not _in_event_loop()
        if may_wait:  # calls that never ran (a later callback refused them) or never ended on this thread
            for stale, _, _ in list(stack):
                self._release(stale)
        deadline = time.monotonic() + WAIT_SECONDS
        while True:
            tokens, dollars = self._estimate(model, size, messages, instance, inputs) if capped else (0, 0.0)
            with self._changed:
                why = self._over(tokens, dollars)
                if why is None:
                    self._in_flight += 1
                    self._reserved_tokens += tokens
                    self._reserved_cost += dollars
                    self._open[call_id] = (tokens, dollars)
                    break
                left = deadline - time.monotonic()
                if self._in_flight == 0 or not may_wait or left <= 0:
                    self.refused += 1
                    raise BudgetStop(f"LM budget spent: {self.describe()}{why}")
                self._changed.wait(min(left, 1.0))
        stack.append((call_id, model, size))

    def _release(self, call_id: str) -> None:
        """Ends a call's reservation (idempotent: its first usage entry releases it already)."""
        with self._changed:
            held = self._open.pop(call_id, None)
            if held is not None:
                self._in_flight -= 1
                self._reserved_tokens -= held[0]
                self._reserved_cost -= held[1]
                self._changed.notify_all()
        stack = getattr(self._current, "calls", None)
        if stack:
            for i in range(len(stack) - 1, -1, -1):
                if stack[i][0] == call_id:
                    del stack[i]
                    break

    def _charge(self, model: str, usage: dict[str, Any]) -> None:
        prompt = int(usage.get("prompt_tokens") or 0)
        completion = int(usage.get("completion_tokens") or 0)
        price = _price(model, prompt, completion)
        stack = getattr(self._current, "calls", None)
        current = stack[-1] if stack else None
        with self._changed:
            self.calls += 1
            self.prompt_tokens += prompt
            self.completion_tokens += completion
            self._largest_call_tokens = max(self._largest_call_tokens, prompt + completion)
            self._completion[model] = max(self._completion.get(model, 0), completion)
            if price is None:
                self.unpriced.add(model)
            else:
                self.cost += price
                self._dearest_call = max(self._dearest_call, price)
            if current is not None:
                call_id, _, size = current
                if size > 0 and prompt > 0:
                    self._ratio[model] = max(self._ratio.get(model, 0.0), prompt / size)
                held = self._open.pop(call_id, None)  # the usage replaces the reservation
                if held is not None:
                    self._in_flight -= 1
                    self._reserved_tokens -= held[0]
                    self._reserved_cost -= held[1]
            self._changed.notify_all()

    # -- use ----------------------------------------------------------------------------------

    @contextlib.contextmanager
    def track(self) -> Iterator[Budget]:
        """Counts and gates every DSPy LM call inside the block (on every thread DSPy uses).

        Re-entrant: inside a block of the same budget, a nested ``track()`` changes nothing (each
        call is counted once). Inside another budget's block both count every call, and a call
        runs only when it fits both."""
        callbacks = list(dspy.settings.callbacks)
        gates = [c for c in callbacks if isinstance(c, _Gate)]
        outer = gates[-1].budgets if gates else ()
        if self in outer:
            yield self
            return
        tracker = _Tracker(self, dspy.settings.usage_tracker)
        callbacks = [c for c in callbacks if not isinstance(c, _Gate)] + [_Gate((*outer, self))]
        with dspy.context(usage_tracker=tracker, callbacks=callbacks):
            yield self

    def describe(self) -> str:
        """One line: spent / cap for each capped quantity."""
        parts = [f"{self.calls}" + (f"/{self.max_lm_calls}" if self.max_lm_calls is not None else "") + " LM calls",
                 f"{self.tokens}" + (f"/{self.max_tokens}" if self.max_tokens is not None else "") + " tokens",
                 f"${self.cost:.4f}" + (f"/${self.max_cost:.2f}" if self.max_cost is not None else "")]
        if self.unpriced:
            parts.append(f"no price for {', '.join(sorted(self.unpriced))}")
        return ", ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        """What was spent and the caps, for run params and reports."""
        return {"lm_calls": self.calls, "tokens": self.tokens, "cost": round(self.cost, 6),
                "max_lm_calls": self.max_lm_calls, "max_tokens": self.max_tokens, "max_cost": self.max_cost,
                "refused_calls": self.refused, "unpriced_models": sorted(self.unpriced),
                "overshoot_tokens": self.overshoot["tokens"], "overshoot_cost": self.overshoot["cost"]}
