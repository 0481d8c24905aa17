"""Dynamic few-shot by retrieval: each node call gets the trainset examples nearest its inputs.

DSPy's ``KNNFewShot`` re-runs a bootstrap compile for every query (about nine LM calls each).
``RetrievalFewShot`` does the retrieval only: at compile time it builds, per node, a pool of the
trainset examples that hold the node's gold output and embeds it once; at inference each node
call embeds its inputs, takes the ``k`` nearest pool entries as demos and makes its one LM call.

What retrieval works best (the embedding, ``k``, demo order, label balance for classifiers) is
chosen on the valset within ``max_lm_calls``: a coordinate search from the defaults, one setting
at a time, keeping a change only when it scores better. The choice is in ``chosen`` afterwards.
``nodes`` limits all of it to the named nodes; the others are left exactly as they were.

Example:
    >>> from programs.builtin import Triage
    >>> knn = RetrievalFewShot(max_lm_calls=0)  # no tuning: the defaults, zero LM calls
    >>> program = knn.compile(Triage(), trainset=trainset)  # doctest: +SKIP
    >>> program.classify.retrieval.k  # doctest: +SKIP
    8
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable, Sequence
from typing import Any

import dspy
from dspy.teleprompt.teleprompt import Teleprompter

from programs.errors import ConfigError, PipelineError
from programs.pipeline import Pipeline
from programs.retrieval import ORDERS, POOLS, Retrieval, embedding_available, resolve_embedding

__all__ = ["RetrievalFewShot"]

logger = logging.getLogger(__name__)

K_GRID = (8, 4, 16)
"""The ``k`` values tried, default first."""
NARROW_GRID = (None, 4, 2)
"""The ``narrow`` values tried with ``narrow=auto``: no narrowing first."""
MIN_VAL = 8  # fewer valset examples than this cannot tell settings apart; tune fewer settings instead


class RetrievalFewShot(Teleprompter):
    """Compiles a pipeline into one whose nodes retrieve their demos per call.

    A setting given here is fixed; one left at None is tuned on the valset (its default is used
    when there is no valset, no metric or no budget).

    Args:
        metric: The DSPy metric the valset is scored with (a ``metrics.PipelineMetric``).
        k: Demos per call (tuned over 8, 4, 16).
        embedding: ``hash``, ``minilm`` or ``module:function`` (tuned over hash, then minilm
            when ``pipec[neural]`` is installed).
        order: ``nearest_last`` (the most similar demo right before the query) or
            ``nearest_first`` (tuned, nearest_last first).
        balance: For classifier nodes, allow at most ``ceil(k/2)`` demos of one label, so the
            demos never all argue for one answer (tuned, off first).
        narrow: For classifier nodes, offer the LM only the labels of the ``k`` nearest pool
            examples, at most this many, most voted first (``programs.label_narrowing``);
            ``auto`` tunes it over none, 4 and 2; None leaves the node's own setting.
        mode: For classifier nodes, ``lm`` (one LM call) or ``vote`` (the neighbours' vote, no LM
            call); ``auto`` tunes it (lm first); None leaves the node's own setting.
        schema_linking, grammar, repair, samples: For code-generator nodes, the CodeGen settings
            of the same names (``programs.sql_steps``), applied as given, not tuned; None leaves
            the node's own setting.
        max_lm_calls: LM calls the tuning may spend, counted as valset examples x nodes per
            candidate evaluated; the valset is subsampled to fit. 0 means no tuning.
        num_threads: Threads for the valset evaluations.
        seed: Seed of the valset subsample.
        nodes: The nodes knn compiles, by name (``"classify"``, ``"classify,reply"`` or a list):
            only they get a retrieval pool and the classifier or SQL settings above; every other
            node keeps its prompt, demos and settings exactly as they are. None (default): every
            node whose gold field the trainset holds. An unknown name, or a node without a gold
            field, is a ConfigError that lists the valid ones.
        pool: ``trainset`` (default): each node's pool is the trainset, fixed at compile time.
            ``store``: the same, and at run time (``pipec run``, ``experiments.recording.Recorder``)
            each node also draws demos from the flywheel store's corrected and approved calls,
            indexed incrementally, weighted by recency. ``--trainset store:approved`` makes the
            compiled pool itself come from the store.
    """

    def __init__(self, metric: Callable[..., Any] | None = None, *, k: int | None = None,
                 embedding: str | None = None, order: str | None = None, balance: bool | None = None,
                 narrow: int | str | None = None, mode: str | None = None, schema_linking: bool | None = None,
                 grammar: bool | None = None, repair: bool | None = None, samples: int | None = None,
                 max_lm_calls: int = 300, num_threads: int = 1, seed: int = 0, pool: str = "trainset",
                 nodes: str | Sequence[str] | None = None) -> None:
        super().__init__()
        if k is not None and int(k) < 1:
            raise ConfigError(f"k must be at least 1, got {k}")
        if order is not None and order not in ORDERS:
            raise ConfigError(f"unknown order {order!r}: choose one of {', '.join(ORDERS)}")
        if embedding is not None:
            resolve_embedding(embedding)
            if not embedding_available(embedding):  # say so now, before a compile run is started
                raise ConfigError(f"embedding {embedding!r} is not installed: run `pip install 'pipec[neural]'`, "
                                  "or use embedding=hash")
        if pool not in POOLS:
            raise ConfigError(f"unknown pool {pool!r}: choose one of {', '.join(POOLS)}")
        if narrow is not None and narrow != "auto" and (isinstance(narrow, bool) or not isinstance(narrow, int)
                                                        or narrow < 1):
            raise ConfigError(f"narrow must be a whole number >= 1 or 'auto', got {narrow!r}")
        if mode is not None and mode not in ("lm", "vote", "auto"):
            raise ConfigError(f"unknown mode {mode!r}: choose lm, vote or auto")
        if samples is not None and int(samples) < 1:
            raise ConfigError(f"samples must be at least 1, got {samples}")
        if int(max_lm_calls) < 0:
            raise ConfigError(f"max_lm_calls must be >= 0, got {max_lm_calls}")
        self.metric = metric
        self.k, self.embedding, self.order, self.balance = k, embedding, order, balance
        self.max_lm_calls, self.num_threads, self.seed = int(max_lm_calls), max(1, int(num_threads)), seed
        self.pool = pool
        self.narrow, self.mode = narrow, mode
        self.codegen = {k: v for k, v in {"schema_linking": schema_linking, "grammar": grammar, "repair": repair,
                                          "samples": samples}.items() if v is not None}
        self.nodes = _node_names(nodes)
        if self.nodes is not None and isinstance(getattr(metric, "pipeline", None), Pipeline):
            _check_nodes(self.nodes, metric.pipeline)  # before a compile run is started
        self.chosen: dict[str, Any] = {}

    def _grid(self) -> dict[str, list[Any]]:
        """Each setting's values to try, its default first; a fixed setting has one value."""
        embeddings = ["hash"] + (["minilm"] if embedding_available("minilm") else [])
        grid = {
            "embedding": [self.embedding] if self.embedding is not None else embeddings,
            "k": [int(self.k)] if self.k is not None else list(K_GRID),
            "order": [self.order] if self.order is not None else list(ORDERS),
            "balance": [bool(self.balance)] if self.balance is not None else [False, True],
        }
        # Classifier settings join the search only when asked for, so the default search is unchanged.
        if self.narrow is not None:
            grid["narrow"] = list(NARROW_GRID) if self.narrow == "auto" else [int(self.narrow)]
        if self.mode is not None:
            grid["mode"] = ["lm", "vote"] if self.mode == "auto" else [self.mode]
        return grid

    def compile(self, student: dspy.Module, *, trainset: Sequence[dspy.Example],
                valset: Sequence[dspy.Example] | None = None) -> dspy.Module:
        """A copy of ``student`` whose nodes retrieve their demos from ``trainset``.

        Raises:
            PipelineError: ``student`` is not a pipec Pipeline, or no node has a gold field
                that the trainset holds.
        """
        if not isinstance(student, Pipeline):
            raise PipelineError(f"--optimizer knn compiles pipec Pipelines (it needs their gold fields), "
                                f"got {type(student).__name__}")
        program = student.deepcopy()
        if self.nodes is not None:
            _check_nodes(self.nodes, program)
        pools = node_pools(program, trainset)
        if self.nodes is not None:
            pools = {name: pool for name, pool in pools.items() if name in self.nodes}
        if not pools:
            raise PipelineError(f"no node of {type(program).__name__} has examples for its gold field in the "
                                f"trainset; gold fields are {dict(program.gold)}")
        grid = self._grid()
        bases: dict[str, dict[str, Retrieval]] = {}

        def apply(config: dict[str, Any]) -> None:
            if config["embedding"] not in bases:  # each embedding embeds each pool once
                bases[config["embedding"]] = {name: Retrieval.build(**pool, embedding=config["embedding"])
                                              for name, pool in pools.items()}
            for name, base in bases[config["embedding"]].items():
                program.nodes()[name].retrieval = base.with_settings(**_settings(config, base), pool=self.pool)
                _apply_node_settings(program.nodes()[name], config, {})
            for name, node in program.nodes().items():
                if self.nodes is None or name in self.nodes:
                    _apply_node_settings(node, {}, self.codegen)

        # Every node runs on every example, retrieving or not: that is what a candidate costs.
        config, report = self._search(program, grid, apply, list(valset or []), len(program.nodes()))
        apply(config)
        self.chosen = {**config, **report, "nodes": sorted(pools),
                       "pool_sizes": {name: len(pool["demos"]) for name, pool in pools.items()}}
        logger.info("knn chose %s", self.chosen)
        return program

    def _search(self, program: Pipeline, grid: dict[str, list[Any]], apply: Callable[[dict[str, Any]], None],
                valset: list[dspy.Example], nodes: int) -> tuple[dict[str, Any], dict[str, Any]]:
        """Coordinate search from the defaults within the LM-call budget: (config, report)."""
        config = {name: values[0] for name, values in grid.items()}
        plan = [(name, value) for name, values in grid.items() for value in values[1:]]
        val = self._budgeted_valset(valset, nodes, 1 + len(plan))
        report: dict[str, Any] = {"val_size": len(val), "candidates": 0, "lm_calls_planned": 0, "val_score": None}
        if not val or self.metric is None:
            return config, report
        plan = plan[: self.max_lm_calls // (len(val) * nodes) - 1]
        best = self._score(program, apply, config, val)
        report.update(candidates=1, lm_calls_planned=len(val) * nodes)
        for name, value in plan:
            candidate = {**config, name: value}
            score = self._score(program, apply, candidate, val)
            report["candidates"] += 1
            report["lm_calls_planned"] += len(val) * nodes
            if score > best:  # a tie keeps the setting already held: no change without evidence
                config, best = candidate, score
        report["val_score"] = best
        return config, report

    def _budgeted_valset(self, valset: list[dspy.Example], nodes: int, candidates: int) -> list[dspy.Example]:
        """The valset, subsampled (seeded) so all ``candidates`` fit the budget, but not below MIN_VAL."""
        affordable = self.max_lm_calls // (nodes * candidates)
        size = min(len(valset), max(affordable, min(MIN_VAL, self.max_lm_calls // nodes)))
        if size <= 0:
            return []
        return valset if size == len(valset) else random.Random(self.seed).sample(valset, size)

    def _score(self, program: Pipeline, apply: Callable[[dict[str, Any]], None], config: dict[str, Any],
               val: list[dspy.Example]) -> float:
        apply(config)
        evaluate = dspy.Evaluate(devset=val, metric=self.metric, num_threads=self.num_threads,
                                 display_progress=False, max_errors=len(val) + 1)
        score = float(evaluate(program).score) / 100.0  # Evaluate reports a percentage
        logger.info("knn candidate %s: %.3f on %d valset examples", config, score, len(val))
        return score


def _node_names(nodes: str | Sequence[str] | None) -> tuple[str, ...] | None:
    """``nodes`` as a tuple of names: a comma-separated string or a list; None stays None."""
    if nodes is None:
        return None
    parts = nodes.split(",") if isinstance(nodes, str) else nodes
    if not isinstance(parts, (list, tuple)) or not all(isinstance(p, str) for p in parts):
        raise ConfigError(f"nodes must name nodes, e.g. nodes=classify or nodes=classify,reply; got {nodes!r}")
    names = tuple(dict.fromkeys(p.strip() for p in parts if p.strip()))
    if not names:
        raise ConfigError("nodes is empty: name at least one node, e.g. nodes=classify")
    return names


def _check_nodes(names: tuple[str, ...], pipeline: Pipeline) -> None:
    """Every name is a node of ``pipeline`` with a gold field (the field its pool is built from)."""
    eligible = [name for name in pipeline.nodes() if name in pipeline.gold]
    for name in names:
        if name not in eligible:
            why = "has no gold field" if name in pipeline.nodes() else "is not a node"
            raise ConfigError(f"--param nodes: {name!r} {why} of {type(pipeline).__name__}; "
                              f"knn can compile {', '.join(eligible) or 'no node'}")


def _apply_node_settings(node: Any, config: dict[str, Any], codegen: dict[str, Any]) -> None:
    """Classifier settings from the search config; fixed CodeGen settings."""
    if node.kind == "classifier":
        for key in ("narrow", "mode"):
            if key in config:
                setattr(node, key, config[key])
    elif node.kind == "codegen":
        for key, value in codegen.items():
            setattr(node, key, value)


def _settings(config: dict[str, Any], base: Retrieval) -> dict[str, Any]:
    cap = math.ceil(config["k"] / 2) if config["balance"] and base.label_field is not None else None
    return {"k": config["k"], "order": config["order"], "max_per_label": cap}


def node_pools(program: Pipeline, trainset: Sequence[dspy.Example]) -> dict[str, dict[str, Any]]:
    """Per node with a gold field: its pool (``Retrieval.build`` arguments, vectors not yet made).

    A node's pool holds the trainset examples that have the node's gold output, as demos in the
    node's own field names: the inputs the example holds, and the gold value as the output.
    """
    pools = {}
    for name, node in program.nodes().items():
        gold = program.gold.get(name)
        if gold is None:
            continue
        demos = []
        for example in trainset:
            if example.get(gold) is None:
                continue
            demo = {f: example[f] for f in node.input_fields if example.get(f) is not None}
            if demo:
                demos.append({**demo, node.output_field: example[gold]})
        if not demos:
            logger.warning("knn: no trainset example holds %r for node %s; it keeps fixed demos", gold, name)
            continue
        label_field = node.output_field if node.kind == "classifier" else None
        # Only the inputs the pool holds are embedded: an input the trainset lacks (a schema the
        # pipeline passes at run time) would add the same text to every query and none to the pool.
        query_fields = tuple(f for f in node.input_fields if any(f in d for d in demos))
        pools[name] = {"demos": demos, "query_fields": query_fields, "label_field": label_field}
    return pools
