"""Dynamic few-shot (``--optimizer knn``) against the best fixed demo sets, on Banking77 intents6.

    .venv/bin/python -m benchmarks.knn_vs_fixed [--methods zero-shot labeled bootstrap-rs knn]

The embedded LM (SmolLM2-135M) with DSPy's cache off, so every LM call is counted. The split is
``benchmarks.banking77.load_split()`` (seed 0: 658 train, 120 dev). Every method is tuned on the
same small valset carved from train (``--val-per-label`` per intent) and compiled on the rest;
dev is used only for the final score. Methods are built through pipec's optimizer registry,
exactly as ``pipec compile`` builds them, with the settings in ``METHODS``.

Writes ``benchmarks/results/knn_vs_fixed.json`` and ``knn_vs_fixed.md``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import dspy

from benchmarks.banking77 import IntentPipeline, load_split
from benchmarks.retrieval import machine
from experiments.evaluate import evaluate_program, lm_usage
from experiments.lm import make_lm
from metrics import PipelineMetric
from optimizers import prepare_optimizer

RESULTS = Path(__file__).parent / "results"

# name -> (optimizer, --param settings). None: the uncompiled program. The fixed-demo methods get
# at least knn's LM-call budget: bootstrap-rs scores 5 candidate programs on the full valset
# (zero-shot, labelled only, and three bootstrapped sets), knn subsamples it to fit 150 calls.
METHODS: dict[str, tuple[str | None, dict[str, Any]]] = {
    "zero-shot": (None, {}),
    "labeled": ("labeled", {"k": 12}),
    "bootstrap-rs": ("bootstrap-rs", {"max_bootstrapped_demos": 4, "max_labeled_demos": 8,
                                      "num_candidate_programs": 2}),
    "knn": ("knn", {"max_lm_calls": 150}),
    "knn-untuned": ("knn", {"max_lm_calls": 0, "embedding": "hash"}),
}
DEFAULT_METHODS = ("labeled", "bootstrap-rs", "knn")


def carve_valset(train: list[dspy.Example], per_label: int) -> tuple[list[dspy.Example], list[dspy.Example]]:
    """The first ``per_label`` train rows of each intent (train is already seeded-shuffled) as the
    valset, the rest as the trainset."""
    taken: dict[str, int] = {}
    rest, val = [], []
    for example in train:
        if taken.get(example.label, 0) < per_label:
            taken[example.label] = taken.get(example.label, 0) + 1
            val.append(example)
        else:
            rest.append(example)
    return rest, val


def run_method(name: str, train: list[dspy.Example], val: list[dspy.Example], dev: list[dspy.Example],
               lm: Any, seed: int) -> dict[str, Any]:
    """Compiles one method on (train, val), scores it on dev, and counts LM calls per phase."""
    optimizer, params = METHODS[name]
    metric = PipelineMetric(IntentPipeline())
    program, compile_calls, chosen, started = IntentPipeline(), 0, None, time.perf_counter()
    if optimizer is not None:
        prepared = prepare_optimizer(optimizer, metric, params, seed=seed, lm=lm.lm, threads=1)
        kwargs = dict(prepared.compile_kwargs, **({"valset": val} if prepared.uses_valset else {}))
        with lm_usage() as usage:
            program = prepared.teleprompter.compile(IntentPipeline(), trainset=train, **kwargs)
        compile_calls, chosen = usage.calls, getattr(prepared.teleprompter, "chosen", None)
    compile_seconds = time.perf_counter() - started
    report = evaluate_program(program, dev, metric, threads=1, progress=False)
    fixed_demos = len(program.intent.demos)
    return {
        "method": name, "optimizer": optimizer, "params": params, "chosen": chosen,
        "dev_accuracy": report.score, "dev_examples": len(dev), "dev_errors": report.errors,
        "dev_lm_calls": report.usage.calls, "lm_calls_per_query": report.usage.calls / len(dev),
        "demos": "retrieved per query" if program.intent.retrieval is not None else fixed_demos,
        "compile_lm_calls": compile_calls, "compile_seconds": round(compile_seconds, 1),
        "dev_seconds": round(report.seconds, 1), "dev_tokens": report.usage.tokens,
    }


def markdown(report: dict[str, Any]) -> str:
    """The comparison as a Markdown table."""
    m = report["machine"]
    lines = [
        "# knn against fixed demos on Banking77 intents6 (`python -m benchmarks.knn_vs_fixed`)", "",
        f"{m['date']} · {m.get('cpu_model') or m['processor']} · {m['cpus']} CPUs · pipec {m.get('pipec')} · "
        f"dspy {m.get('dspy')} · LM {report['lm']} (cache off)", "",
        f"Split: seed {report['seed']}, {report['sizes']['train']} train / {report['sizes']['val']} val (carved "
        f"from train, used for tuning) / {report['sizes']['dev']} dev (scored once).", "",
        "| method | settings | demos | dev accuracy | LM calls / query | compile LM calls | compile s | dev s |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in report["results"]:
        settings = ", ".join(f"{k}={v}" for k, v in r["params"].items()) or "-"
        if r["chosen"]:
            keep = ("embedding", "k", "order", "balance", "val_score")
            settings += "; chose " + ", ".join(f"{k}={r['chosen'][k]}" for k in keep if k in r["chosen"])
        lines.append(f"| {r['method']} | {settings} | {r['demos']} | {r['dev_accuracy']:.3f} | "
                     f"{r['lm_calls_per_query']:.2f} | {r['compile_lm_calls']} | {r['compile_seconds']} | "
                     f"{r['dev_seconds']} |")
    lines += ["", "LM calls are counted (DSPy's usage records, cache off), not assumed. Seconds are wall time on a "
              "shared 2-core machine with other jobs running: compare LM calls, not seconds."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Runs the comparison and writes its JSON and Markdown reports."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(DEFAULT_METHODS))
    parser.add_argument("--val-per-label", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, default=None, help="score on the first N dev examples only (a smoke run)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    train, dev, _ = load_split(seed=args.seed)
    train, val = carve_valset(train, args.val_per_label)
    dev = dev[: args.limit] if args.limit else dev
    dspy.configure_cache(enable_disk_cache=False, enable_memory_cache=False)
    lm = make_lm("local", cache=False)
    results = []
    with dspy.context(lm=lm.lm, adapter=lm.adapter):
        for name in args.methods:
            logging.getLogger(__name__).info("running %s", name)
            results.append(run_method(name, train, val, dev, lm, args.seed))
    report = {"machine": machine(), "lm": lm.settings["model"], "seed": args.seed,
              "sizes": {"train": len(train), "val": len(val), "dev": len(dev)}, "results": results}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "knn_vs_fixed.json").write_text(json.dumps(report, indent=2, ensure_ascii=False, default=str) + "\n",
                                                encoding="utf-8")
    (args.out / "knn_vs_fixed.md").write_text(markdown(report), encoding="utf-8")
    return report


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    print(markdown(main()))
