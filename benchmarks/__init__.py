"""Performance and quality harnesses (not part of the test suite).

Run one with ``pipec bench NAME [--json]`` or ``python -m benchmarks.NAME``; each writes
``benchmarks/results/NAME.json`` (figures, date, machine, versions) and ``NAME.md`` (a table).
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["BENCHMARKS", "main", "run_benchmark"]

# name -> module; each module has run() -> dict with the figures and a Markdown "table".
BENCHMARKS = {
    "overhead": "benchmarks.overhead",
    "parallel": "benchmarks.parallel",
    "cache": "benchmarks.cache",
    "local-lm": "benchmarks.local_lm",
    "quality": "benchmarks.quality",
    "intents77": "benchmarks.intents77",
    "restaurants": "benchmarks.restaurants",
    "recording": "benchmarks.recording",
    "store": "benchmarks.store",
}


def run_benchmark(name: str, *, results_dir: str | None = None, command: str | None = None,
                  **kwargs: Any) -> dict[str, Any]:
    """Runs benchmark ``name``, writes its result files, and returns its figures (with ``table``).

    Args:
        name: A key of ``BENCHMARKS``.
        results_dir: Where the files go; ``benchmarks/results`` by default.
        command: The command line recorded with the result; ``pipec bench NAME`` by default.
        **kwargs: Passed to the benchmark's ``run`` (smaller sizes for a smoke test).

    Raises:
        KeyError: ``name`` is not a benchmark.
    """
    from benchmarks.harness import show_progress, write_result

    show_progress()
    module = importlib.import_module(BENCHMARKS[name])
    result = module.run(**kwargs)
    figures = {k: v for k, v in result.items() if k != "table"}
    write_result(name, figures, result["table"], command=command, results_dir=results_dir)
    return result


def main(name: str) -> None:
    """``python -m benchmarks.NAME [--json]``: runs it, prints the table (or the JSON object)."""
    import argparse
    import contextlib
    import json
    import sys

    parser = argparse.ArgumentParser(prog=f"python -m {BENCHMARKS[name]}")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = parser.parse_args()
    # DSPy's optimizers print progress on stdout; keep stdout for the result.
    with contextlib.redirect_stdout(sys.stderr):
        result = run_benchmark(name, command=f"python -m {BENCHMARKS[name]}" + (" --json" if args.json else ""))
    table = result.pop("table")
    print(json.dumps({"benchmark": name, **result}, default=str) if args.json else table)
