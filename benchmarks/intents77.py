"""All 77 Banking77 intents: what the LM adds over a nearest-neighbour vote that needs no LM.

The split is ``banking77.load_split("intents77", seed=0, dev_per_label=5)``: 385 dev messages (5
per intent), the other 9,618 the trainset, which is also every retrieval pool. Rows:

- **vote** (no LM call): the classifier in ``mode=vote``, the similarity-weighted label vote of
  the ``k`` nearest trainset messages, for the ``hash`` and ``minilm`` embeddings, k=1 and k=8.
- **zero-shot**, **labeled** (8 fixed labelled demos), **knn** (8 retrieved demos, all 77
  labels in the prompt) and the optimizers that search (bootstrap-rs, mipro, gepa): one LM call
  per query with all 77 labels in the prompt and grammar, several seconds a call on the embedded
  model (tens of seconds on 2 cores shared by a team), so these run on the ``small`` scope and
  only when granted (``run(rows=...)``); otherwise the row says "not run".
- **search optimizers** (``SEARCH_ROWS``): compiled for real, as ``pipec compile`` compiles
  (``optimizers.registry.prepare_optimizer`` with pipec's metric, the row's stated budget
  overriding pipec's defaults), on a small trainset and a valset both carved from the train
  split (``SEARCH_TRAIN_PER_LABEL`` and ``SEARCH_VAL`` messages; the dev set is never shown to
  the optimizer), then scored on dev like every row. Their tuning LM calls are the row's
  "compile LM calls". pipec's textual optimizers (protegi, opro, ...) are measured on
  ``intents6`` by ``benchmarks/quality.py``, not here.
- **knn + narrowing** (``narrow=N``): the labels of the 8 nearest trainset messages, by vote,
  at most N of them, are the only labels the LM may answer; the neighbours are the demos. When
  the neighbours agree on one label no LM call is made.

Scopes: ``full`` (all 385 dev messages), ``subset`` (the first dev message of each intent, 77)
and ``small`` (the first ``SMALL`` of the subset). Every row is also scored on the ``small``
messages, which every row ran on: that column compares all rows like for like.

Each other row's program is built by the optimizer pipec compile would use (``RetrievalFewShot``,
``LabeledFewShot``), with fixed settings: no valset tuning, so no tuning LM calls; the dev set is
never used to choose anything. The result file is rewritten after every row, so a run stopped
early still reports what it measured (the rest "not run").

Run: ``pipec bench intents77``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import dspy

from benchmarks import banking77
from benchmarks.harness import markdown_table

__all__ = ["ROWS", "SEARCH_ROWS", "run"]

logger = logging.getLogger(__name__)

DEV_PER_LABEL = 5
SUBSET_PER_LABEL = 1  # the subset scope: one dev message per intent (77)
SMALL = 20  # the small scope: the first 20 messages of the subset (20 intents)
NOT_RUN = "not run"

# (row name, kind, settings, scope): scope "full" = all 385 dev messages, "subset" = 77.
ROWS: tuple[tuple[str, str, dict[str, Any], str], ...] = (
    ("vote hash k=1", "vote", {"embedding": "hash", "k": 1}, "full"),
    ("vote hash k=8", "vote", {"embedding": "hash", "k": 8}, "full"),
    ("vote minilm k=1", "vote", {"embedding": "minilm", "k": 1}, "full"),
    ("vote minilm k=8", "vote", {"embedding": "minilm", "k": 8}, "full"),
    ("vote minilm k=1 (subset)", "vote", {"embedding": "minilm", "k": 1}, "subset"),
    ("vote minilm k=8 (subset)", "vote", {"embedding": "minilm", "k": 8}, "subset"),
    ("knn minilm k=8 narrow=2", "lm", {"optimizer": "knn", "embedding": "minilm", "k": 8, "narrow": 2},
     "subset"),
    ("knn minilm k=8 narrow=4", "lm", {"optimizer": "knn", "embedding": "minilm", "k": 8, "narrow": 4},
     "subset"),
    ("knn minilm k=8 narrow=2 (full dev)", "lm", {"optimizer": "knn", "embedding": "minilm", "k": 8, "narrow": 2},
     "full"),
    ("zero-shot", "lm", {"optimizer": None}, "small"),
    ("labeled k=8", "lm", {"optimizer": "labeled", "k": 8}, "small"),
    ("knn minilm k=8 (all 77 labels)", "lm", {"optimizer": "knn", "embedding": "minilm", "k": 8}, "small"),
)
# The optimizers that search, with the budget each is given (settings passed like `--param`,
# overriding pipec's defaults). Each 77-label call takes seconds, so the budgets are small; the
# rows run only when named in run(rows=...).
SEARCH_ROWS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    # 2 candidates (DSPy's seeds -1 and 0: the unshuffled bootstrap and one shuffled bootstrap; the
    # zero-shot and labelled-only candidates are rows of their own): 2 valset evaluations plus the
    # bootstrap passes over a 40-message trainset (SEARCH_TRAIN_LIMIT). The teacher (4 labelled
    # demos, all 77 labels) is almost never right on this model, so each pass runs through the whole
    # trainset: 2 x 40 + 2 x 20 = 120 compile calls at most, ~13 CPU-s each on the embedded model.
    ("bootstrap-rs (2 candidates, 40 train)", "bootstrap-rs",
     {"num_candidate_programs": 1, "restrict": [-1, 0], "max_bootstrapped_demos": 2, "max_labeled_demos": 4}),
    # GEPA with 40 metric calls: the 20-message valset scored once for the start, then about three
    # reflective steps (a traced minibatch of 3, one reflection call, the new instruction on the same
    # 3, the valset again only for a candidate that does better): ~45 compile calls.
    ("gepa (40 metric calls)", "gepa", {"max_metric_calls": 40}),
    ("mipro (3 candidates, 4 trials)", "mipro", {"num_candidates": 3, "num_trials": 4, "minibatch": False}),
)
SEARCH_TRAIN_PER_LABEL = 1  # the search optimizers' trainset: the first train message of each intent (77)
# A row's trainset cut to its first N messages (the first N intents met in train order), to fit its budget.
SEARCH_TRAIN_LIMIT: dict[str, int] = {"bootstrap-rs (2 candidates, 40 train)": 40, "gepa (40 metric calls)": 40}
SEARCH_VAL = 20  # their valset: the next train message of each of the first 20 intents in train order


def _subset(dev: Sequence[dspy.Example]) -> list[int]:
    """Indices of the first ``SUBSET_PER_LABEL`` dev messages of each intent (the dev order is seeded)."""
    taken: dict[str, int] = {}
    chosen = []
    for i, example in enumerate(dev):
        if taken.get(example.label, 0) < SUBSET_PER_LABEL:
            taken[example.label] = taken.get(example.label, 0) + 1
            chosen.append(i)
    return chosen


def _classify(program: dspy.Module, examples: Sequence[dspy.Example], labels: Sequence[str]) -> dict[str, Any]:
    from experiments.evaluate import lm_usage
    from metrics.classification import classification_report

    predicted, errors = [], 0
    start = time.perf_counter()
    with lm_usage() as usage:
        for example in examples:
            try:
                predicted.append(program(text=example.text).label)
            except Exception as exc:  # one failed call is an error row, not a failed benchmark
                logger.warning("intents77: %s on %r", exc, example.text[:60])
                predicted.append(None)
                errors += 1
    seconds = time.perf_counter() - start
    report = classification_report([(e.label, p if p is not None else "(error)") for e, p in zip(examples, predicted,
                                                                                                  strict=True)],
                                   labels)
    n = len(examples)
    return {"n": n, "accuracy": report.accuracy, "macro_f1": report.macro_f1, "lm_calls_per_query": usage.calls / n,
            "prompt_tokens_per_query": usage.prompt_tokens / n, "errors": errors, "seconds": seconds,
            "predicted": predicted}


def _scores_on(figures: dict[str, Any], examples: Sequence[dspy.Example], positions: Sequence[int],
               labels: Sequence[str]) -> dict[str, Any]:
    """A row's accuracy and macro-F1 on some of the messages it ran on (the same predictions)."""
    from metrics.classification import classification_report

    pairs = [(examples[i].label, figures["predicted"][i] or "(error)") for i in positions]
    report = classification_report(pairs, labels)
    return {"accuracy": report.accuracy, "macro_f1": report.macro_f1}


class _Programs:
    """Builds each row's program; a pool is embedded once per embedding and shared by rows."""

    def __init__(self, train: Sequence[dspy.Example], labels: tuple[str, ...]) -> None:
        self.train, self.labels = list(train), labels
        self._compiled: dict[str, Any] = {}

    def knn(self, embedding: str, k: int, **node_settings: Any) -> dspy.Module:
        if embedding not in self._compiled:
            self._compiled[embedding] = self._compile_knn(embedding)
        program = self._compiled[embedding].deepcopy()
        node = program.intent
        node.retrieval = node.retrieval.with_settings(k=k)
        for key, value in node_settings.items():
            setattr(node, key, value)
        return program

    def _compile_knn(self, embedding: str) -> dspy.Module:
        """``--optimizer knn`` with fixed settings. The pool's vectors (9,618 MiniLM embeddings take
        minutes on 2 shared cores) are kept in ``$PIPEC_HOME/bench-cache`` keyed by the pool's
        content, and a later run loads what knn built instead of embedding the pool again."""
        from optimizers.knn import RetrievalFewShot
        from programs.retrieval import Retrieval

        digest = hashlib.sha256(json.dumps([[e.text, e.label] for e in self.train]).encode()).hexdigest()[:16]
        home = Path(os.environ.get("PIPEC_HOME") or Path.home() / ".cache" / "pipec")
        cached = home / "bench-cache" / f"intents77-{embedding}-{digest}.json"
        if cached.is_file():
            program = banking77.IntentPipeline(self.labels)
            program.intent.retrieval = Retrieval.load(json.loads(cached.read_text(encoding="utf-8")))
            return program
        knn = RetrievalFewShot(k=8, embedding=embedding, order="nearest_last", balance=False, max_lm_calls=0)
        program = knn.compile(banking77.IntentPipeline(self.labels), trainset=self.train)
        cached.parent.mkdir(parents=True, exist_ok=True)
        partial = cached.with_suffix(".tmp")
        partial.write_text(json.dumps(program.intent.retrieval.dump()), encoding="utf-8")
        os.replace(partial, cached)
        return program

    def search_split(self, limit: int | None = None) -> tuple[list[dspy.Example], list[dspy.Example]]:
        """(trainset, valset) for the search optimizers, both from the train split (seeded order):
        the first ``SEARCH_TRAIN_PER_LABEL`` messages of each intent (only the first ``limit`` of
        them when given), then one more message of each of the first ``SEARCH_VAL`` intents met
        (the same valset whatever the limit)."""
        taken: dict[str, int] = {}
        train, rest = [], []
        for example in self.train:
            if taken.get(example.label, 0) < SEARCH_TRAIN_PER_LABEL:
                taken[example.label] = taken.get(example.label, 0) + 1
                train.append(example)
            else:
                rest.append(example)
        val, seen = [], set()
        for example in rest:
            if len(val) < SEARCH_VAL and example.label not in seen:
                seen.add(example.label)
                val.append(example)
        return (train if limit is None else train[:limit]), val

    def search(self, optimizer: str, params: dict[str, Any], lm: Any,
               train_limit: int | None = None) -> tuple[dspy.Module, dict[str, Any]]:
        """Compiles the zero-shot pipeline with ``optimizer`` as ``pipec compile`` does (the registry's
        optimizer, pipec's metric, 1 thread) on ``search_split(train_limit)``; returns the compiled
        program and the compile's LM calls, tokens and seconds. Runs under the caller's LM context."""
        from experiments.evaluate import lm_usage
        from metrics.pipeline_metric import PipelineMetric
        from optimizers.registry import prepare_optimizer, spec_for
        from programs.trace import calls_from_dspy_trace

        student = banking77.IntentPipeline(self.labels)
        # Names the student's nodes, as pipec compile's baseline run does before it copies the
        # student: the optimizer's deep copies keep the names, and the metric maps their DSPy traces
        # (GEPA's traced minibatches) to nodes; unnamed copies would score 0 on every traced call.
        calls_from_dspy_trace(student, ())
        train, val = self.search_split(train_limit)
        metric = PipelineMetric(student, feedback=spec_for(optimizer).feedback)
        prepared = prepare_optimizer(optimizer, metric, params, seed=0, lm=lm, threads=1)
        kwargs = dict(prepared.compile_kwargs)
        if prepared.uses_valset:
            kwargs["valset"] = val
        start = time.perf_counter()
        with lm_usage() as usage:
            program = prepared.teleprompter.compile(student.deepcopy(), trainset=train, **kwargs)
        return program, {"compile_lm_calls": usage.calls, "compile_prompt_tokens": usage.prompt_tokens,
                         "compile_seconds": time.perf_counter() - start, "search_train": len(train),
                         "search_val": len(val), "optimizer_settings": prepared.settings}

    def build(self, settings: dict[str, Any], kind: str) -> dspy.Module:
        optimizer = settings.get("optimizer")
        if kind == "search":
            raise ValueError("a search row is compiled by _Programs.search, under an LM")
        if kind == "vote":
            return self.knn(settings["embedding"], settings["k"], mode="vote")
        if optimizer == "knn":
            return self.knn(settings["embedding"], settings["k"], narrow=settings.get("narrow"))
        if optimizer == "labeled":
            return dspy.LabeledFewShot(k=settings["k"]).compile(banking77.IntentPipeline(self.labels),
                                                                trainset=self.train, sample=True)
        if optimizer is None:
            return banking77.IntentPipeline(self.labels)
        raise ValueError(f"intents77: no fixed-settings program for optimizer {optimizer!r}")


def _row(name: str, kind: str, scope: str, settings: dict[str, Any], figures: dict[str, Any] | None,
         small: dict[str, Any] | None, note: str = "", subset: dict[str, Any] | None = None,
         compiled: dict[str, Any] | None = None) -> dict[str, Any]:
    row = {"row": name, "kind": kind, "scope": scope, "settings": settings, "note": note}
    if figures is None:
        return {**row, "status": NOT_RUN}
    from experiments.tracking import code_version

    return {**row, "status": "measured", **(compiled or {"compile_lm_calls": 0}), "n": figures["n"],
            "accuracy": figures["accuracy"],
            "macro_f1": figures["macro_f1"], "small_accuracy": small["accuracy"],
            "subset_accuracy": (subset or {}).get("accuracy", NOT_RUN),
            "lm_calls_per_query": figures["lm_calls_per_query"],
            "prompt_tokens_per_query": figures["prompt_tokens_per_query"], "errors": figures["errors"],
            "seconds": figures["seconds"], "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            **code_version(Path(__file__).resolve().parent)}


def _table(rows: list[dict[str, Any]]) -> str:
    def cells(r: dict[str, Any]) -> list[Any]:
        if r["status"] == NOT_RUN:
            return [r["row"], NOT_RUN, NOT_RUN, NOT_RUN, NOT_RUN, NOT_RUN, NOT_RUN, NOT_RUN, NOT_RUN]
        return [r["row"], r["n"], r["accuracy"], r["macro_f1"], r.get("subset_accuracy", NOT_RUN),
                r["small_accuracy"], r["lm_calls_per_query"], r["prompt_tokens_per_query"],
                r.get("compile_lm_calls", 0)]

    return markdown_table(["program", "dev messages", "accuracy", "macro-F1", "accuracy on the 77 subset",
                           f"accuracy on the {SMALL} common", "LM calls / query", "prompt tokens / query",
                           "compile LM calls"], [cells(r) for r in rows])


def _previous(path: Path | None) -> dict[str, dict[str, Any]]:
    """Measured rows of an earlier result file, by name (to keep them beside the rows run now)."""
    if path is None or not path.is_file():
        return {}
    try:
        rows = json.loads(path.read_text(encoding="utf-8")).get("rows", [])
    except (OSError, ValueError):
        return {}
    return {r["row"]: r for r in rows if r.get("status") == "measured"}


def run(rows: Sequence[str] | None = None, checkpoint: Callable[[dict[str, Any]], None] | None = None,
        keep: str | os.PathLike | None = None) -> dict[str, Any]:
    """Measures the rows (see the module docstring).

    Args:
        rows: The rows to run by name (default: every row of ``ROWS``; the search optimizers only
            when named); the others say "not run".
        checkpoint: Called with the result so far after every row (to write it).
        keep: An earlier result file whose measured rows are kept (each row carries the date and
            the commit it was measured at) unless run again now.
    """
    from experiments.lm import make_lm

    train, dev, labels = banking77.load_split("intents77", seed=0, dev_per_label=DEV_PER_LABEL)
    subset = _subset(dev)
    scopes = {"full": list(range(len(dev))), "subset": subset, "small": subset[:SMALL]}
    programs = _Programs(train, labels)
    config = None
    kept = _previous(Path(keep) if keep else None)
    measured: dict[str, dict[str, Any]] = {}
    planned = list(ROWS) + [(name, "search", {"optimizer": optimizer, "params": params,
                                              **({"search_train": SEARCH_TRAIN_LIMIT[name]}
                                                 if name in SEARCH_TRAIN_LIMIT else {})}, "small")
                            for name, optimizer, params in SEARCH_ROWS]
    wanted = set(rows) if rows is not None else {r[0] for r in ROWS}
    started = time.perf_counter()

    def result() -> dict[str, Any]:
        all_rows = [measured.get(n) or kept.get(n) or _row(n, k, sc, s, None, None, "not run in this session")
                    for n, k, s, sc in planned]
        return {"rows": all_rows, "table": _table(all_rows), "total_s": time.perf_counter() - started,
                "settings": {
                    "dataset": "Banking77 intents77 (benchmarks.banking77.load_split, seed 0, 5 dev per intent)",
                    "train": len(train), "dev": len(dev), "scopes": {k: len(v) for k, v in scopes.items()},
                    "subset_rule": f"the first {SUBSET_PER_LABEL} dev message of each intent, seeded dev order; "
                                   f"small: its first {SMALL}",
                    "lm": "local (SmolLM2-135M-Instruct, llama.cpp, JSON-schema constrained decoding), "
                          "temperature 0, no cache, 1 llama.cpp thread",
                    "programs": "built by the optimizers pipec compile uses, with the settings in rows[].settings; "
                                "fixed settings (no tuning LM calls) except the search rows; the dev set chooses "
                                "nothing",
                    "search": {"budgets": {n: {"optimizer": o, **p} for n, o, p in SEARCH_ROWS},
                               "trainset": f"the first {SEARCH_TRAIN_PER_LABEL} train message(s) of each intent",
                               "trainset_limits": dict(SEARCH_TRAIN_LIMIT),
                               "valset": f"the next train message of each of the first {SEARCH_VAL} intents in "
                                         "train order (never dev)",
                               "metric": "pipec's PipelineMetric (the label must match), 1 thread, seed 0"},
                }}

    for name, kind, settings, scope in planned:
        if name not in wanted:
            continue
        logger.info("intents77: %s after %.0f s", name, time.perf_counter() - started)
        examples = [dev[i] for i in scopes[scope]]
        compiled = None
        if kind in {"lm", "search"}:
            if config is None:
                config = make_lm("local", cache=False)
            with dspy.context(lm=config.lm, adapter=config.adapter):
                if kind == "search":
                    program, compiled = programs.search(settings["optimizer"], settings["params"], config.lm,
                                                        settings.get("search_train"))
                    logger.info("intents77: %s compiled with %d LM calls (%.0f s)", name,
                                compiled["compile_lm_calls"], compiled["compile_seconds"])
                else:
                    program = programs.build(settings, kind)
                figures = _classify(program, examples, labels)
        else:
            program = programs.build(settings, kind)
            with dspy.context(lm=None):  # the vote never reaches for an LM: none is configured
                figures = _classify(program, examples, labels)
        small = _scores_on(figures, examples, range(min(SMALL, len(examples)))
                           if scope != "full" else [scopes["full"].index(i) for i in scopes["small"]], labels)
        positions = {"full": scopes["subset"], "subset": range(len(examples))}.get(scope)
        sub = _scores_on(figures, examples, positions, labels) if positions is not None else None
        measured[name] = _row(name, kind, scope, settings, figures, small, subset=sub, compiled=compiled)
        logger.info("intents77: %s accuracy %.3f (%d examples, %.0f s)", name, figures["accuracy"], figures["n"],
                    figures["seconds"])
        if checkpoint is not None:
            checkpoint(result())
    return result()


if __name__ == "__main__":
    from benchmarks import main

    main("intents77")
