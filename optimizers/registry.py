"""The optimizers pipec offers, by name: DSPy's teleprompters used as they are, with defaults
sized for small budgets, and every setting open to ``--param key=value``."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from dspy.teleprompt.teleprompt import Teleprompter

from optimizers.params import accepted_names, split_params
from programs.errors import ConfigError

__all__ = ["OPTIMIZERS", "OptimizerSequence", "OptimizerSpec", "PreparedOptimizer", "prepare_optimizer", "spec_for"]

# Arguments the compile orchestration passes itself; a user cannot set them with --param.
_RESERVED = ("student", "trainset", "valset", "teacher", "metric")


@dataclass(frozen=True)
class OptimizerSpec:
    """How to build one optimizer.

    Attributes:
        name: The CLI name.
        load: Returns the Teleprompter class (imported lazily).
        summary: One line for ``--help``.
        defaults: pipec's constructor defaults; a template value ``"{seed}"``, ``"{lm}"``,
            ``"{prompt_lm}"``, ``"{threads}"`` or ``"{store}"`` is filled in at build time.
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


def _own(module: str, name: str) -> Callable[[], type]:
    def load() -> type:
        import importlib

        return getattr(importlib.import_module(module), name)

    return load


# pipec's textual-feedback optimizers: the prompt writer is --prompt-lm (the task LM by default);
# the default budgets fit a couple of minutes of the embedded 135M LM on the triage pipeline.
_TEXTUAL = {"prompt_lm": "{prompt_lm}", "num_threads": "{threads}", "seed": "{seed}"}


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
                      "inputs (one LM call per node); k, embedding, order tuned on the valset; classifiers: "
                      "narrow (labels of the neighbours only), mode=vote (no LM call); SQL nodes: "
                      "schema_linking, grammar, repair, samples; nodes=NAME,... compiles those nodes only",
                      defaults={"max_lm_calls": 300, "num_threads": "{threads}", "seed": "{seed}"},
                      uses_valset=True),
        OptimizerSpec("protegi", _own("optimizers.protegi", "ProTeGi"),
                      "ProTeGi: failures on a minibatch -> the LM's reasons (textual gradient) -> edited and "
                      "paraphrased prompts, beam search with bandit selection; budget max_lm_calls=150",
                      defaults={**_TEXTUAL, "max_lm_calls": 150, "val_size": 6}, uses_valset=True),
        OptimizerSpec("opro", _own("optimizers.opro", "OPRO"),
                      "OPRO: a meta-prompt of past (instruction, score) pairs in ascending order plus task "
                      "exemplars; several new instructions per step; budget max_lm_calls=120",
                      defaults={**_TEXTUAL, "max_lm_calls": 120, "val_size": 6}, uses_valset=True),
        OptimizerSpec("ape", _own("optimizers.ape", "APE"),
                      "APE: instructions generated from input/output demos, the best resampled as paraphrases; "
                      "budget max_lm_calls=120",
                      defaults={**_TEXTUAL, "max_lm_calls": 120, "val_size": 6}, uses_valset=True),
        OptimizerSpec("evoprompt", _own("optimizers.evoprompt", "EvoPrompt"),
                      "EvoPrompt: a population evolved by LM crossover and mutation (variant=ga, or de); "
                      "budget max_lm_calls=150",
                      defaults={**_TEXTUAL, "max_lm_calls": 150, "val_size": 6}, uses_valset=True),
        OptimizerSpec("feedback", _own("optimizers.feedback", "FeedbackRewrite"),
                      "judge feedback: epochs of minibatches, a judge's score and comment per failure, a rewrite "
                      "kept only when the valset score improves; budget max_lm_calls=150",
                      defaults={**_TEXTUAL, "max_lm_calls": 150, "val_size": 6}, uses_valset=True),
        OptimizerSpec("human", _own("optimizers.human", "HumanFeedback"),
                      "manual loop: your notes (--param notes=FILE, - for stdin, or store: for the comments and "
                      "corrections `pipec review` saved in the flywheel store, newest first, limit=20 per node) -> "
                      "LM rewrite -> you accept the diff (accept=ask on a terminal; accept=all keeps every diff "
                      "that scores no worse, for runs without a person; accept=none records them only); budget "
                      "max_lm_calls=60",
                      defaults={**_TEXTUAL, "max_lm_calls": 60, "val_size": 6, "store": "{store}"},
                      uses_valset=True),
        OptimizerSpec("query-aware", _own("optimizers.query_aware", "QueryAware"),
                      "query-aware prompts (after TRPrompt): a prompt writer writes an instruction per query and "
                      "learns in context from judged rewards; TWO LM calls per query at inference on that node; "
                      "budget max_lm_calls=80",
                      defaults={"num_threads": "{threads}", "seed": "{seed}", "max_lm_calls": 80, "val_size": 6},
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


class OptimizerSequence(Teleprompter):
    """Optimizers run one after the other (``--optimizer protegi,knn``): each compiles the
    previous one's program, so instructions found first are kept by the demos chosen next.

    Args:
        steps: ``(name, teleprompter, compile kwargs, uses valset)`` in order.
    """

    def __init__(self, steps: list[tuple[str, Any, dict[str, Any], bool]]) -> None:
        super().__init__()
        self.steps = steps
        self.chosen: dict[str, Any] = {}

    def compile(self, student: Any, *, trainset: Any, valset: Any = None) -> Any:
        program = student
        for name, teleprompter, kwargs, uses_valset in self.steps:
            kwargs = dict(kwargs)
            if uses_valset and valset is not None:
                kwargs["valset"] = valset
            program = teleprompter.compile(program, trainset=trainset, **kwargs)
            chosen = getattr(teleprompter, "chosen", None)
            if chosen:
                self.chosen[name] = chosen
        return program

    @property
    def trajectory(self) -> list[tuple[int, float]]:
        """The steps' ``best_score`` trajectories, one after the other."""
        joined: list[tuple[int, float]] = []
        for _, teleprompter, _, _ in self.steps:
            joined += [(len(joined), score) for _, score in getattr(teleprompter, "trajectory", None) or []]
        return joined


def _parts(name: str) -> list[str]:
    return [part.strip() for part in name.split(",") if part.strip()]


def spec_for(name: str) -> OptimizerSpec:
    """The spec of optimizer ``name``; a ConfigError listing the choices when there is none.

    ``a,b`` names a sequence: its spec needs feedback or a valset when one of its steps does.
    """
    if "," in name:
        specs = [spec_for(part) for part in _parts(name)]
        if len(specs) < 2:
            raise ConfigError(f"--optimizer {name!r}: a sequence names two or more optimizers, e.g. protegi,knn")
        return OptimizerSpec(",".join(s.name for s in specs), lambda: OptimizerSequence,
                             " then ".join(s.name for s in specs), feedback=any(s.feedback for s in specs),
                             uses_valset=any(s.uses_valset for s in specs))
    if name not in OPTIMIZERS:
        close = difflib.get_close_matches(name, OPTIMIZERS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"unknown optimizer {name!r}.{hint} Choose one of: {', '.join(OPTIMIZERS)}")
    return OPTIMIZERS[name]


def _prepare_sequence(name: str, metric: Callable[..., Any], params: Mapping[str, Any], **context: Any
                      ) -> PreparedOptimizer:
    """A Sequence: each setting goes to every step that has it; one no step has is an error."""
    parts = _parts(name)
    spec_for(name)  # checks every name
    accepted = {}
    for part in parts:
        cls = spec_for(part).load()
        accepted[part] = set(accepted_names(cls.__init__, exclude=_RESERVED)) | set(
            accepted_names(cls.compile, exclude=_RESERVED))
    for key in params:
        if not any(key in names for names in accepted.values()):
            valid = sorted(set().union(*accepted.values()))
            raise ConfigError(f"--param {key}: no optimizer of {name!r} has a setting {key!r}. "
                              f"Valid settings: {', '.join(valid)}")
    prepared = [prepare_optimizer(part, metric, {k: v for k, v in params.items() if k in accepted[part]},
                                  **context) for part in parts]
    steps = [(p.name, p.teleprompter, p.compile_kwargs, p.uses_valset) for p in prepared]
    settings = {"sequence": ",".join(parts),
                **{f"{p.name}.{k}": v for p in prepared for k, v in p.settings.items()}}
    return PreparedOptimizer(",".join(parts), OptimizerSequence(steps), {}, settings,
                             any(p.uses_valset for p in prepared),
                             any(p.feedback for p in prepared))


def prepare_optimizer(name: str, metric: Callable[..., Any], params: Mapping[str, Any] | None = None, *,
                      seed: int = 0, lm: Any = None, threads: int = 1, prompt_lm: Any = None,
                      store: str | None = None) -> PreparedOptimizer:
    """Builds the optimizer ``name`` with pipec's defaults overridden by ``params``.

    Args:
        name: A key of ``OPTIMIZERS``.
        metric: The DSPy metric (a ``metrics.PipelineMetric``).
        params: User settings, constructor or compile arguments alike.
        seed: Seed for optimizers that take one.
        lm: The LM proposal/reflection steps use (the task LM by default).
        threads: Evaluation threads for optimizers that take them.
        prompt_lm: The LM that writes prompts for pipec's textual optimizers (``{prompt_lm}``):
            a ``dspy.LM`` or an ``LMConfig``; ``lm`` when None.
        store: The flywheel store (``{store}``, e.g. ``pipec compile --store``) for optimizers that read
            it (``human``'s ``notes=store:``); None: ``$PIPEC_STORE``, else ``$PIPEC_HOME/store.duckdb``.

    ``name`` may be a sequence, ``protegi,knn``: the optimizers run one after the other.

    Raises:
        ConfigError: Unknown optimizer or setting, or settings the optimizer rejects.
    """
    if "," in name:
        return _prepare_sequence(name, metric, dict(params or {}), seed=seed, lm=lm, threads=threads,
                                 prompt_lm=prompt_lm, store=store)
    spec = spec_for(name)
    reserved = sorted(set(params or {}) & set(_RESERVED))
    if reserved:
        raise ConfigError(f"--param {reserved[0]}: pipec passes {', '.join(_RESERVED)} itself; they cannot be set")
    cls = spec.load()
    init_names = accepted_names(cls.__init__, exclude=_RESERVED)
    compile_names = accepted_names(cls.compile, exclude=_RESERVED)
    user_init, user_compile = split_params(params or {}, init_names, compile_names, name)
    context = {"seed": seed, "lm": lm, "threads": threads, "prompt_lm": prompt_lm if prompt_lm is not None else lm,
               "store": store}
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
