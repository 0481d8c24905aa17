"""One budget for everything an optimizer spends: LM calls, tokens, and dollars.

``Budget`` counts every LM call made inside :meth:`Budget.track` (the task LM, the prompt-writing
LM, any judge LM: all DSPy LM calls on every thread), and refuses a call *before* it starts when
it would go over a cap. An optimizer therefore never spends more than it was given; when the
budget runs out it stops and returns the best program it has.

What counts:

- ``max_lm_calls``: calls that reached a model. A cache hit costs nothing, but while the cap is
  reached even a cache hit is refused (the gate runs before the cache lookup).
- ``max_tokens``: prompt + completion tokens. Before a call, the tokens spent so far plus the
  largest call seen so far must fit.
- ``max_cost``: US dollars, priced with LiteLLM's bundled (offline) price map
  (``litellm.cost_per_token``). The embedded LM and models without a listed price cost 0; those
  are named in ``unpriced``. The check before a call uses the dearest call so far.

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

import contextlib
import logging
import math
import threading
from collections.abc import Iterator
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
    """DSPy callback: refuses an LM call before it starts when it would go over a cap."""

    def __init__(self, budget: Budget) -> None:
        super().__init__()
        self.budget = budget
        self._open: set[str] = set()

    def on_lm_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        self.budget._reserve()  # raises BudgetStop
        with self.budget._lock:
            self._open.add(call_id)

    def on_lm_end(self, call_id: str, outputs: Any, exception: BaseException | None = None) -> None:
        with self.budget._lock:
            if call_id in self._open:
                self._open.discard(call_id)
                self.budget._in_flight -= 1


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
        self._largest_call_tokens = 0
        self._dearest_call = 0.0
        self._lock = threading.RLock()

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

    def affords(self, calls: int = 1) -> bool:
        """Whether ``calls`` more LM calls fit every cap (tokens and dollars judged by the largest
        call so far)."""
        with self._lock:
            if self.max_lm_calls is not None and self.calls + self._in_flight + calls > self.max_lm_calls:
                return False
            if self.max_tokens is not None and self.tokens + calls * self._largest_call_tokens > self.max_tokens:
                return False
            if self.max_tokens is not None and self.tokens >= self.max_tokens:
                return False
            if self.max_cost is not None and self.cost + calls * self._dearest_call > self.max_cost:
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

    def _reserve(self) -> None:
        with self._lock:
            if not self.affords(1):
                self.refused += 1
                raise BudgetStop(f"LM budget spent: {self.describe()}")
            self._in_flight += 1

    def _charge(self, model: str, usage: dict[str, Any]) -> None:
        prompt = int(usage.get("prompt_tokens") or 0)
        completion = int(usage.get("completion_tokens") or 0)
        price = _price(model, prompt, completion)
        with self._lock:
            self.calls += 1
            self.prompt_tokens += prompt
            self.completion_tokens += completion
            self._largest_call_tokens = max(self._largest_call_tokens, prompt + completion)
            if price is None:
                self.unpriced.add(model)
            else:
                self.cost += price
                self._dearest_call = max(self._dearest_call, price)

    # -- use ----------------------------------------------------------------------------------

    @contextlib.contextmanager
    def track(self) -> Iterator[Budget]:
        """Counts and gates every DSPy LM call inside the block (on every thread DSPy uses).

        Re-entrant: inside a block of the same budget, a nested ``track()`` changes nothing (each
        call is counted once)."""
        current = dspy.settings.usage_tracker
        if isinstance(current, _Tracker) and current.budget is self:
            yield self
            return
        tracker = _Tracker(self, current)
        with dspy.context(usage_tracker=tracker, callbacks=[*dspy.settings.callbacks, _Gate(self)]):
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
                "refused_calls": self.refused, "unpriced_models": sorted(self.unpriced)}
