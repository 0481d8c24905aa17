"""What each optimizer buys on Banking77 ``intents6`` with the embedded LM (SmolLM2-135M).

Zero-shot first, then every optimizer pipec offers (``optimizers.registry.OPTIMIZERS``): DSPy's
(labeled, bootstrap, bootstrap-rs, mipro, gepa), knn, and pipec's textual-feedback optimizers
(protegi, opro, ape, evoprompt, feedback, human, query-aware). Each runs through ``pipec compile``
(``experiments.compile.compile_pipeline``) on the same trainset and a valset carved from the
train split, then is evaluated once on the dev split, which no optimizer ever sees. Every run
lands in one MLflow experiment (``pipec-bench-quality``) in the usual store, with
``dev.accuracy`` logged into each compile's run, so the UI compares them side by side. Each
optimizer gets a fresh DSPy cache: repeats inside its own run are cache hits, as for a user
compiling once, and no optimizer is served answers another one paid for.

Each row reports the compile's valset score before and after (the baseline and the compiled
program, as ``pipec compile`` measured them on the whole valset), the LM calls the compile made
(counted by the compile), the LM-call cap it ran under (``max_lm_calls`` as the optimizer was
built with it; "no cap" for optimizers without one) and whether the count stayed within it.

Rows can be run a few at a time (``run(rows=[...])``) and an earlier result file kept
(``keep=``): its measured rows stay, each stamped with the date and the commit it was measured
at; rows never measured say "not run". The budget caps of the optimizers are in ``PARAMS`` and
in the result file. ``human`` gets the notes ``HUMAN_NOTES`` (a fixed text the benchmark writes
to a file) and ``accept=all``: no person reads its diffs here.

Run: ``pipec bench quality`` (every row) or ``python -m benchmarks.quality``.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dspy

from benchmarks import banking77
from benchmarks.harness import fresh_dspy_cache, markdown_table, write_jsonl

__all__ = ["HUMAN_NOTES", "PARAMS", "TEXTUAL", "run"]

logger = logging.getLogger(__name__)

EXPERIMENT = "pipec-bench-quality"
VAL_PER_LABEL = 6  # 36 valset examples carved from train: enough to rank candidates, cheap to score
NOT_RUN = "not run"
ZERO_SHOT = "zero-shot"
# pipec's textual-feedback optimizers (issue 11), each run under an LM-call cap.
TEXTUAL = ("protegi", "opro", "ape", "evoprompt", "feedback", "human", "query-aware")
# Budget caps, as `pipec compile --param` would set them, sized so each compile takes minutes on
# 2 shared cores (~0.5 s a call with a fixed prompt, ~2 s with per-call retrieved demos, ~15 s a
# long generation). Every other setting is pipec's default (`pipec optimizers`). "{notes}" is
# the notes file the benchmark writes (HUMAN_NOTES).
PARAMS: dict[str, list[str]] = {
    # MIPROv2 keeps auto=light. It describes the trainset in batches of view_data_batch_size
    # examples: 10 by default, ~60 long generations on 622 examples; 100 makes it 7.
    "mipro": ["view_data_batch_size=100"],
    # GEPA light would spend ~520 metric calls (4 x valset + 380) and ~80 reflections, each a
    # long generation; 120 metric calls (~15 reflections) replace auto=light.
    "gepa": ["max_metric_calls=120"],
    # knn's tuning budget (default 300): its prompts carry retrieved demos, so llama.cpp cannot
    # reuse a prompt prefix and each call costs ~4x a fixed-prompt one.
    "knn": ["max_lm_calls=150"],
    # The textual optimizers score candidates on 6 valset examples (val_size=6, one call each
    # on this one-node pipeline) and hold back ~30 calls to confirm a winner on the whole valset.
    "protegi": ["max_lm_calls=100"],
    "opro": ["max_lm_calls=100"],
    "ape": ["max_lm_calls=100"],
    "evoprompt": ["max_lm_calls=100"],
    "feedback": ["max_lm_calls=100"],  # a judge call per failing minibatch example, counted too
    "human": ["max_lm_calls=60", "notes={notes}", "accept=all"],
    # Two calls per example once the prompt writer is attached (writer + task), so confirming on
    # the valset costs ~60 calls: 120 leaves room for the rollouts.
    "query-aware": ["max_lm_calls=120"],
}
# The notes `human` reads (written to a file by the benchmark): fixed, so a rerun is the same run.
HUMAN_NOTES = (
    "intent: Answer with the one label that names what the customer asks about.\n"
    "intent: A new card that has not arrived yet is card_arrival; a card that was lost or stolen is "
    "lost_or_stolen_card.\n"
    "intent: A PIN that no longer works or is locked is pin_blocked.\n"
    "intent: Money sent that the other person has not received is transfer_not_received_by_recipient.\n"
)
NOTES = {
    "human": "notes: the benchmark's fixed HUMAN_NOTES text; accept=all (no person read the diffs)",
    "query-aware": "two LM calls per dev query when the prompt writer is kept",
}

LMFactory = Callable[[bool], Any]  # cache -> experiments.lm.LMConfig


def _local_lm(cache: bool) -> Any:
    from experiments.lm import make_lm

    return make_lm("local", cache=cache)


def _defaults(names: Sequence[str]) -> dict[str, dict[str, Any]]:
    """pipec's constructor defaults of each optimizer (``--param`` values in PARAMS override them)."""
    from optimizers.registry import OPTIMIZERS

    return {n: {k: str(v) for k, v in OPTIMIZERS[n].defaults.items()} for n in names if n in OPTIMIZERS}


def _split() -> tuple[list[dspy.Example], list[dspy.Example], list[dspy.Example]]:
    """(train, val, dev): the valset is the first ``VAL_PER_LABEL`` train examples of each label."""
    train_all, dev, labels = banking77.load_split()
    val, train, taken = [], [], dict.fromkeys(labels, 0)
    for example in train_all:
        if taken[example.label] < VAL_PER_LABEL:
            taken[example.label] += 1
            val.append(example)
        else:
            train.append(example)
    return train, val, dev


def _dev_accuracy(program: dspy.Module, dev: list[dspy.Example], config: Any) -> dict[str, Any]:
    from experiments.evaluate import evaluate_program
    from metrics.pipeline_metric import PipelineMetric

    with dspy.context(lm=config.lm, adapter=config.adapter):
        report = evaluate_program(program, dev, PipelineMetric(banking77.IntentPipeline()), threads=1, progress=False)
    correct = sum(r.prediction is not None and r.prediction.get("label") == dev[r.index].label for r in report.results)
    return {"accuracy": correct / len(dev), "lm_calls": report.usage.calls, "tokens": report.usage.tokens,
            "seconds": report.seconds, "errors": report.errors}


def _log_dev(run_id: str | None, dev: dict[str, Any]) -> None:
    """Adds the dev figures to a compile run (best-effort, like all tracking)."""
    if run_id is None:
        return
    try:
        from mlflow.entities import Metric
        from mlflow.tracking import MlflowClient

        stamp = int(time.time() * 1000)
        MlflowClient().log_batch(run_id, metrics=[Metric(f"dev.{k}", float(v), stamp, 0) for k, v in dev.items()])
    except Exception as exc:  # telemetry never breaks the benchmark
        logger.warning("logging dev figures to run %s failed: %s", run_id, exc)


def _stamp() -> dict[str, Any]:
    from experiments.tracking import code_version

    return {"measured_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            **code_version(Path(__file__).resolve().parent)}


def _params(name: str, notes: Path) -> list[str]:
    return [p.replace("{notes}", str(notes)) for p in PARAMS.get(name, [])]


def lm_call_cap(name: str, params: Sequence[str], lm: Any = None) -> int | None:
    """The ``max_lm_calls`` optimizer ``name`` is built with under ``params`` (pipec's default
    when they do not set it), by the registry that builds it for the compile (``lm``: the task
    LM, which some optimizers need to be built); None: no such cap."""
    from metrics.pipeline_metric import PipelineMetric
    from optimizers.params import parse_params
    from optimizers.registry import prepare_optimizer, spec_for

    metric = PipelineMetric(banking77.IntentPipeline(), feedback=spec_for(name).feedback)
    settings = prepare_optimizer(name, metric, parse_params(params), seed=0, lm=lm).settings
    cap = settings.get("init.max_lm_calls", settings.get("compile.max_lm_calls"))
    return int(cap) if cap is not None else None


def within_cap(calls: int, cap: int | None) -> bool | None:
    """Whether ``calls`` stayed within ``cap`` (None when there is no cap)."""
    return None if cap is None else calls <= cap


def _zero_shot(dev: list[dspy.Example], session: str, lm: LMFactory) -> dict[str, Any]:
    from experiments.tracking import RunTracker

    config = lm(False)
    start = time.perf_counter()
    figures = _dev_accuracy(banking77.IntentPipeline(), dev, config)
    tracker = RunTracker(EXPERIMENT, run_name="intents6-zero-shot",
                         tags={"pipec.kind": "evaluate", "pipec.bench": "quality", "pipec.bench.session": session})
    with tracker.start():
        tracker.params({"pipeline": "benchmarks.banking77:IntentPipeline", "optimizer": "none (zero-shot)",
                        "lm": config.settings, "dev.size": len(dev)})
        tracker.metrics({f"dev.{k}": v for k, v in figures.items()})
    return {"optimizer": ZERO_SHOT, "status": "measured", "dev_accuracy": figures["accuracy"],
            "compile_lm_calls": 0, "compile_tokens": 0, "max_lm_calls": None, "within_cap": None,
            "val_score_baseline": None, "val_score_compiled": None, "not_below_baseline": None,
            "wall_s": time.perf_counter() - start, "dev": figures, "run_id": tracker.run_id, "note": "",
            **_stamp()}


def _compile_and_score(name: str, files: dict[str, Path], dev: list[dspy.Example], session: str,
                       tmp: Path, lm: LMFactory) -> dict[str, Any]:
    from experiments.compile import CompileOptions, compile_pipeline

    params = _params(name, files["notes"])
    with fresh_dspy_cache(tmp / f"dspy-cache-{name}"):
        config = lm(True)
        cap = lm_call_cap(name, params, config.lm)
        opts = CompileOptions(f"{Path(banking77.__file__).resolve()}:IntentPipeline", name,
                              trainset=str(files["train"]), valset=str(files["val"]), params=params, lm=config,
                              seed=0, out=str(tmp / f"{name}.json"), threads=1, experiment=EXPERIMENT,
                              progress=False, cache=True,
                              extra_tags={"pipec.bench": "quality", "pipec.bench.session": session})
        start = time.perf_counter()
        result = compile_pipeline(opts, say=lambda _: None)
        wall = time.perf_counter() - start
        program = banking77.IntentPipeline()
        program.load(result["program_path"])
        dev_figures = _dev_accuracy(program, dev, config)
    _log_dev(result["run_id"], dev_figures)
    calls = result["compile"]["lm_calls"]
    baseline, compiled = result["baseline"]["score"], result["compiled"]["score"]
    return {"optimizer": name, "status": "measured", "dev_accuracy": dev_figures["accuracy"],
            "compile_lm_calls": calls, "compile_tokens": result["compile"]["tokens"],
            "max_lm_calls": cap, "within_cap": within_cap(calls, cap),
            "val_score_baseline": baseline, "val_score_compiled": compiled,
            "not_below_baseline": compiled >= baseline, "wall_s": wall,
            "params": [p.replace(str(files["notes"]), "HUMAN_NOTES file") for p in params],
            "val": {"baseline_lm_calls": result["baseline"]["lm_calls"],
                    "compiled_lm_calls": result["compiled"]["lm_calls"]},
            "dev": dev_figures, "run_id": result["run_id"], "note": NOTES.get(name, ""), **_stamp()}


def _previous(path: Path | None) -> dict[str, dict[str, Any]]:
    """Measured rows of an earlier result file, by optimizer. Rows written before rows carried
    their own stamp get the file's date and commit, and the columns derived from their figures."""
    if path is None or not path.is_file():
        return {}
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    machine = document.get("machine") or {}
    caps = {name: _cap_in(params) for name, params in
            ((document.get("settings") or {}).get("optimizer_params") or {}).items()}
    kept = {}
    for row in document.get("rows", []):
        if row.get("status", "measured") != "measured" or "optimizer" not in row:
            continue
        if "measured_at" not in row:
            row = {**row, "status": "measured", "measured_at": document.get("date"),
                   "git.commit": machine.get("git.commit"), "git.dirty": machine.get("git.dirty")}
            if "max_lm_calls" not in row:
                row["max_lm_calls"] = caps.get(row["optimizer"])
                row["within_cap"] = within_cap(row.get("compile_lm_calls", 0), row["max_lm_calls"])
            if "not_below_baseline" not in row:
                base, comp = row.get("val_score_baseline"), row.get("val_score_compiled")
                row["not_below_baseline"] = None if base is None or comp is None else comp >= base
            row.setdefault("note", "")
        kept[row["optimizer"]] = row
    return kept


def _cap_in(params: Sequence[str]) -> int | None:
    for param in params:
        key, _, value = param.partition("=")
        if key.strip() == "max_lm_calls":
            return int(value)
    return None


def _not_run(name: str) -> dict[str, Any]:
    return {"optimizer": name, "status": NOT_RUN, "note": NOTES.get(name, "")}


def _yes_no(value: bool | None) -> str:
    return "n/a" if value is None else ("yes" if value else "NO")


def _table(rows: Sequence[dict[str, Any]]) -> str:
    def cells(r: dict[str, Any]) -> list[Any]:
        if r["status"] != "measured":
            return [r["optimizer"], NOT_RUN] + [NOT_RUN] * 8
        commit = (r.get("git.commit") or "?")[:7]
        measured = f"{(r.get('measured_at') or '?')[:10]} {commit}"
        cap = r.get("max_lm_calls")
        na = lambda v: "n/a" if v is None else v  # noqa: E731
        cap_cell = "n/a" if r["optimizer"] == ZERO_SHOT else "no cap" if cap is None else cap
        return [r["optimizer"], measured, cap_cell, r["compile_lm_calls"],
                _yes_no(r.get("within_cap")), na(r.get("val_score_baseline")), na(r.get("val_score_compiled")),
                _yes_no(r.get("not_below_baseline")), r["dev_accuracy"], r["wall_s"]]

    table = markdown_table(
        ["optimizer", "measured (date, commit)", "LM-call cap", "compile LM calls", "within cap",
         "valset baseline", "valset compiled", "compiled >= baseline", "dev accuracy", "wall s (pipec compile)"],
        [cells(r) for r in rows])
    notes = [f"- {r['optimizer']}: {r['note']}" for r in rows if r.get("note")]
    return table + ("\n\n" + "\n".join(notes) if notes else "")


def run(rows: Sequence[str] | None = None, checkpoint: Callable[[dict[str, Any]], None] | None = None,
        keep: str | os.PathLike | Sequence[str | os.PathLike] | None = None, lm: LMFactory | None = None
        ) -> dict[str, Any]:
    """Zero-shot, then each registered optimizer, all scored on the dev split.

    Args:
        rows: The rows to run (``zero-shot`` and optimizer names; default: all), in that order.
            The others are kept from ``keep`` or say "not run".
        checkpoint: Called with the result so far after every row (to write it).
        keep: An earlier result file, or several (a later file's row wins), whose measured rows are
            kept unless run again now (rows measured by runs side by side are put together so).
        lm: Builds the LM config from the cache flag; default the embedded LM (``local``).

    Returns:
        ``rows`` (``optimizer``, ``status``, ``dev_accuracy``, ``compile_lm_calls``,
        ``max_lm_calls``, ``within_cap``, valset scores, ``wall_s``, ``measured_at``, the commit
        and details), the settings, and ``table`` (Markdown).

    Raises:
        ValueError: A row that is not ``zero-shot`` or a registered optimizer.
    """
    from experiments.tracking import tracking_uri
    from optimizers.registry import OPTIMIZERS

    names = [ZERO_SHOT, *OPTIMIZERS]
    wanted = list(names) if rows is None else list(rows)
    unknown = [r for r in wanted if r not in names]
    if unknown:
        raise ValueError(f"unknown quality row(s) {unknown}; rows are {', '.join(names)}")
    lm = lm or _local_lm
    kept: dict[str, dict[str, Any]] = {}
    for path in [keep] if isinstance(keep, (str, os.PathLike)) else keep or []:
        kept.update(_previous(Path(path)))
    measured: dict[str, dict[str, Any]] = {}
    train, val, dev = _split()
    session = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    started = time.perf_counter()

    def result() -> dict[str, Any]:
        all_rows = [measured.get(n) or kept.get(n) or _not_run(n) for n in names]
        return {
            "rows": all_rows,
            "total_s": time.perf_counter() - started,
            "run_now": [n for n in names if n in measured],
            "settings": {
                "dataset": "Banking77 intents6 (benchmarks.banking77.load_split, seed 0)",
                "train": len(train), "val": len(val), "dev": len(dev),
                "val_source": f"the first {VAL_PER_LABEL} train examples of each label (the split is already "
                              "shuffled)",
                "lm": "local (SmolLM2-135M-Instruct, llama.cpp, JSON-schema constrained decoding), temperature 0",
                "threads": 1, "seed": 0, "optimizer_params": {n: PARAMS.get(n, []) for n in names[1:]},
                "human_notes": HUMAN_NOTES, "human_accept": "all (the benchmark accepts every diff)",
                "optimizer_defaults": _defaults(names[1:]),
                "defaults": "pipec's (`pipec optimizers`) for everything not in optimizer_params",
                "max_lm_calls": "the cap the optimizer was built with (its max_lm_calls; 'no cap' for "
                                "optimizers without one); within_cap compares the compile's LM calls with it",
                "dspy_cache": "a fresh disk cache per optimizer (zero-shot: none)",
                "mlflow": {"experiment": EXPERIMENT, "tracking_uri": tracking_uri(), "session_tag": session},
                "wall_s": "the whole `pipec compile` run: baseline and compiled valset evaluations, the optimizer, "
                          "tracking; the dev evaluation is in rows[].dev.seconds",
                "kept_rows": "rows not run now come from the earlier result file, stamped with their date and "
                             "commit (measured_at, git.commit)",
            },
            "note": "Accuracy is the fraction of the 120 dev examples labelled right; the dev split is never used "
                    "for tuning. Valset scores are pipec compile's, on the whole valset. Times are wall times on "
                    "a machine whose 2 cores are shared with other workloads.",
            "table": _table(all_rows),
        }

    with tempfile.TemporaryDirectory(prefix="pipec-bench-quality-") as tmp:
        files = {"train": write_jsonl(Path(tmp) / "train.jsonl", train),
                 "val": write_jsonl(Path(tmp) / "val.jsonl", val), "notes": Path(tmp) / "human-notes.txt"}
        files["notes"].write_text(HUMAN_NOTES, encoding="utf-8")
        todo = list(dict.fromkeys(wanted))
        for index, name in enumerate(todo, start=1):
            logger.info("quality: %s (%d/%d) after %.0f s", name, index, len(todo), time.perf_counter() - started)
            if name == ZERO_SHOT:
                with fresh_dspy_cache(None):
                    measured[name] = _zero_shot(dev, session, lm)
            else:
                measured[name] = _compile_and_score(name, files, dev, session, Path(tmp), lm)
            row = measured[name]
            logger.info("quality: %s done in %.0f s, dev accuracy %.3f, compile LM calls %s (cap %s), valset "
                        "%s -> %s", name, row["wall_s"], row["dev_accuracy"], row["compile_lm_calls"],
                        row["max_lm_calls"], row["val_score_baseline"], row["val_score_compiled"])
            if checkpoint is not None:
                checkpoint(result())
    return result()


if __name__ == "__main__":
    from benchmarks import main

    main("quality")
