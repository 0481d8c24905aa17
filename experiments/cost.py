"""What LM calls cost in US dollars, from LiteLLM's price map (offline: the copy bundled with
LiteLLM, which the CLI selects with ``LITELLM_LOCAL_MODEL_COST_MAP``).

The embedded LM (``local/...``) and the scripted test LMs (``fake/...``) cost 0. A model the map
does not list has an *unknown* cost: None, never 0, and a total that includes one is unknown
too (the unpriced models are named), so a run never claims to have been free when it was not.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import dspy

from experiments.evaluate import SharedUsageTracker

__all__ = ["FREE_PREFIXES", "Cost", "call_cost", "log_cost", "run_capped", "takes_max_cost", "track_cost", "usage_cost"]

FREE_PREFIXES = ("local/", "fake/")


def call_cost(model: str, prompt_tokens: int, completion_tokens: int) -> float | None:
    """Dollars for one call of ``model``; None when the price map does not list the model."""
    if model.startswith(FREE_PREFIXES):
        return 0.0
    try:
        import litellm

        prompt, completion = litellm.cost_per_token(model=model, prompt_tokens=int(prompt_tokens),
                                                    completion_tokens=int(completion_tokens))
    except Exception:  # litellm raises a plain Exception for a model it has no price for
        return None
    return float(prompt) + float(completion)


@dataclass
class Cost:
    """A sum of call costs: ``usd`` is None as soon as one call had no price (see ``unpriced``)."""

    usd: float | None = 0.0
    unpriced: set[str] = field(default_factory=set)

    def add(self, model: str, prompt_tokens: int, completion_tokens: int) -> None:
        price = call_cost(model, prompt_tokens, completion_tokens)
        if price is None:
            self.unpriced.add(model)
            self.usd = None
        elif self.usd is not None:
            self.usd += price

    def __add__(self, other: Cost) -> Cost:
        usd = None if self.usd is None or other.usd is None else self.usd + other.usd
        return Cost(usd, self.unpriced | other.unpriced)

    def as_dict(self) -> dict[str, Any]:
        return {"usd": self.usd, "unpriced": sorted(self.unpriced)}


def usage_cost(usage: Mapping[str, Iterable[Mapping[str, Any]]]) -> Cost:
    """The cost of DSPy usage entries, ``{model: [{"prompt_tokens", "completion_tokens", ...}]}``
    (a ``dspy.utils.usage_tracker.UsageTracker``'s ``usage_data``)."""
    cost = Cost()
    for model, entries in usage.items():
        for entry in entries:
            cost.add(model, int(entry.get("prompt_tokens") or 0), int(entry.get("completion_tokens") or 0))
            if model in cost.unpriced:  # no price for one call, none for the rest: skip a LiteLLM lookup per call
                break
    return cost


@contextmanager
def track_cost() -> Iterator[Cost]:
    """The cost of every DSPy LM call inside the block, known when the block ends (cache hits
    cost nothing: DSPy records no usage for them). Counters nested inside it
    (``experiments.evaluate.lm_usage``, an optimizer's budget) pass their calls on to it, and it
    passes them on to the tracker in force before it, the way ``lm_usage`` does.
    """
    cost = Cost()
    tracker = SharedUsageTracker()
    parent = dspy.settings.usage_tracker
    with dspy.context(usage_tracker=tracker):
        try:
            yield cost
        finally:
            total = usage_cost(tracker.usage_data)
            cost.usd, cost.unpriced = total.usd, total.unpriced
            if parent is not None:
                for lm, entries in tracker.usage_data.items():
                    parent.usage_data[lm].extend(entries)


def log_cost(tracker: Any, phases: Mapping[str, Cost]) -> dict[str, Any]:
    """Logs ``<phase>.cost.usd`` per phase and ``cost.usd`` in total (left out when unknown; the
    param ``cost.unpriced`` then names the models without a price). Returns the figures."""
    total = Cost()
    for cost in phases.values():
        total = total + cost
    metrics = {f"{phase}.cost.usd": cost.usd for phase, cost in phases.items() if cost.usd is not None}
    if total.usd is not None:
        metrics["cost.usd"] = total.usd
    tracker.metrics(metrics)
    if total.unpriced:
        tracker.params({"cost.unpriced": sorted(total.unpriced)})
    return {"usd": total.usd, "phases": {phase: cost.usd for phase, cost in phases.items()},
            "unpriced": sorted(total.unpriced)}


def takes_max_cost(optimizer: str) -> bool:
    """Whether the optimizer has a dollar budget of its own (pipec's textual optimizers do: when
    it is spent they stop and return their best program so far)."""
    if "," in optimizer:
        return False
    from optimizers.params import accepted_names
    from optimizers.registry import spec_for

    try:
        return "max_cost" in accepted_names(spec_for(optimizer).load().__init__)
    except Exception:  # an unknown optimizer is reported by prepare_optimizer, with the right message
        return False


def run_capped(compile_fn: Callable[[], Any], max_cost: float | None,
               keep: Callable[[], Any]) -> tuple[Any, str | None]:
    """Runs an optimizer's compile under a dollar cap (``optimizers.budget.Budget``).

    DSPy's own optimizers keep their best program in local variables: a stop mid-compile leaves
    nothing to return. So when the cap is reached the compile is stopped before the next LM call
    and ``keep()`` (the uncompiled program) is returned, with the reason.

    Returns:
        ``(program, None)`` when the compile finished, ``(keep(), reason)`` when the cap stopped it.
    """
    if max_cost is None:
        return compile_fn(), None
    from optimizers.budget import Budget, BudgetStop

    budget = Budget(max_cost=max_cost)
    try:
        with budget.track():
            return compile_fn(), None
    except BudgetStop:
        return keep(), (f"--max-cost ${max_cost:g} reached ({budget.describe()}); the optimizer keeps no "
                        "partial result, so the program stays as it was before compiling")
