"""The optimizers pipec offers, by name: DSPy's teleprompters used as they are, with defaults
sized for small budgets, and every setting open to ``--param key=value``."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from optimizers.params import accepted_names, split_params
from programs.errors import ConfigError

__all__ = ["OPTIMIZERS", "OptimizerSpec", "PreparedOptimizer", "prepare_optimizer", "spec_for"]

# Arguments the compile orchestration passes itself; a user cannot set them with --param.
_RESERVED = ("student", "trainset", "valset", "teacher", "metric")


@dataclass(frozen=True)
class OptimizerSpec:
    """How to build one optimizer.

    Attributes:
        name: The CLI name.
        load: Returns the Teleprompter class (imported lazily).
        summary: One line for ``--help``.
        defaults: pipec's constructor defaults; a template value ``"{seed}"``, ``"{lm}"`` or
            ``"{threads}"`` is filled in at build time.
        compile_defaults: pipec's compile-argument defaults.
        feedback: The metric must return ``dspy.Prediction(score, feedback)``.
        uses_valset: The optimizer's compile accepts a valset.
        exclusive: ``{setting: defaults it displaces}``: a user setting that conflicts with
            one of pipec's defaults (MIPROv2's and GEPA's ``auto`` against explicit budgets).
    """

    name: str
    load: Callable[[], type]
    summary: str
    defaults: Mapping[str, Any] = field(default_factory=dict)
    compile_defaults: Mapping[str, Any] = field(default_factory=dict)
    feedback: bool = False
    uses_valset: bool = False
    exclusive: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


def _tp(name: str) -> Callable[[], type]:
    def load() -> type:
        import dspy.teleprompt

        return getattr(dspy.teleprompt, name)

    return load


def _knn() -> type:
    from optimizers.knn import RetrievalFewShot

    return RetrievalFewShot


OPTIMIZERS: dict[str, OptimizerSpec] = {
    spec.name: spec
    for spec in (
        OptimizerSpec("labeled", _tp("LabeledFewShot"), "k labelled trainset examples as demos (no LM calls)",
                      defaults={"k": 8}),
        OptimizerSpec("bootstrap", _tp("BootstrapFewShot"),
                      "demos from the program's own traces that pass every node's validators",
                      defaults={"max_bootstrapped_demos": 4, "max_labeled_demos": 4}),
        OptimizerSpec("bootstrap-rs", _tp("BootstrapFewShotWithRandomSearch"),
                      "several bootstrapped demo sets, the best on the valset kept",
                      defaults={"max_bootstrapped_demos": 4, "max_labeled_demos": 4,
                                "num_candidate_programs": 4, "num_threads": "{threads}"},
                      uses_valset=True),
        OptimizerSpec("mipro", _tp("MIPROv2"), "MIPROv2: proposed instructions and demos, Bayesian search",
                      defaults={"auto": "light", "seed": "{seed}", "num_threads": "{threads}",
                                "prompt_model": "{lm}", "task_model": "{lm}",
                                "max_bootstrapped_demos": 2, "max_labeled_demos": 4},
                      uses_valset=True,
                      exclusive={"num_candidates": ("auto",), "num_trials": ("auto",)}),
        OptimizerSpec("gepa", _tp("GEPA"), "GEPA: reflective instruction evolution from validator feedback",
                      defaults={"auto": "light", "seed": "{seed}", "num_threads": "{threads}",
                                "reflection_lm": "{lm}"},
                      feedback=True, uses_valset=True,
                      exclusive={"max_metric_calls": ("auto",), "max_full_evals": ("auto",)}),
        OptimizerSpec("knn", _knn, "dynamic few-shot: each call's demos are the trainset examples nearest its "
                      "inputs (one LM call per node); k, embedding, order tuned on the valset",
                      defaults={"max_lm_calls": 300, "num_threads": "{threads}", "seed": "{seed}"},
                      uses_valset=True),
    )
}


@dataclass
class PreparedOptimizer:
    """A built optimizer and everything needed to run and record it."""

    name: str
    teleprompter: Any
    compile_kwargs: dict[str, Any]
    settings: dict[str, Any]
    uses_valset: bool
    feedback: bool


def _fill(value: Any, context: Mapping[str, Any]) -> Any:
    if isinstance(value, str) and value.startswith("{") and value.endswith("}") and value[1:-1] in context:
        return context[value[1:-1]]
    return value


def spec_for(name: str) -> OptimizerSpec:
    """The spec of optimizer ``name``; a ConfigError listing the choices when there is none."""
    if name not in OPTIMIZERS:
        close = difflib.get_close_matches(name, OPTIMIZERS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"unknown optimizer {name!r}.{hint} Choose one of: {', '.join(OPTIMIZERS)}")
    return OPTIMIZERS[name]


def prepare_optimizer(name: str, metric: Callable[..., Any], params: Mapping[str, Any] | None = None, *,
                      seed: int = 0, lm: Any = None, threads: int = 1) -> PreparedOptimizer:
    """Builds the optimizer ``name`` with pipec's defaults overridden by ``params``.

    Args:
        name: A key of ``OPTIMIZERS``.
        metric: The DSPy metric (a ``metrics.PipelineMetric``).
        params: User settings, constructor or compile arguments alike.
        seed: Seed for optimizers that take one.
        lm: The LM proposal/reflection steps use (the task LM by default).
        threads: Evaluation threads for optimizers that take them.

    Raises:
        ConfigError: Unknown optimizer or setting, or settings the optimizer rejects.
    """
    spec = spec_for(name)
    reserved = sorted(set(params or {}) & set(_RESERVED))
    if reserved:
        raise ConfigError(f"--param {reserved[0]}: pipec passes {', '.join(_RESERVED)} itself; they cannot be set")
    cls = spec.load()
    init_names = accepted_names(cls.__init__, exclude=_RESERVED)
    compile_names = accepted_names(cls.compile, exclude=_RESERVED)
    user_init, user_compile = split_params(params or {}, init_names, compile_names, name)
    context = {"seed": seed, "lm": lm, "threads": threads}
    displaced = {d for key, ds in spec.exclusive.items() if key in {**user_init, **user_compile} for d in ds}
    init = {k: _fill(v, context) for k, v in spec.defaults.items() if k not in displaced}
    init.update(user_init)
    if "auto" in displaced:
        init["auto"] = None
    compile_kwargs = {k: _fill(v, context) for k, v in spec.compile_defaults.items()}
    compile_kwargs.update(user_compile)
    try:
        teleprompter = cls(metric=metric, **init) if "metric" in accepted_names(cls.__init__) else cls(**init)
    except (TypeError, ValueError, AssertionError) as exc:  # GEPA validates its settings with assert
        raise ConfigError(f"optimizer {name!r} rejected its settings: {exc}") from exc
    settings = {**{f"init.{k}": v for k, v in init.items()}, **{f"compile.{k}": v for k, v in compile_kwargs.items()}}
    return PreparedOptimizer(name, teleprompter, compile_kwargs, settings, spec.uses_valset, spec.feedback)
