"""`import programs` (and metrics, optimizers) must not pull in the heavy dependencies."""

import subprocess
import sys

import pytest

HEAVY = ("mlflow", "duckdb", "llama_cpp", "torch", "sentence_transformers", "sqlglot", "matplotlib")


@pytest.mark.parametrize("package", ["programs", "metrics", "optimizers"])
def test_import_is_light(package):
    code = f"import sys, {package}; print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"import {package} loaded {out}"


def test_the_tracking_writer_process_loads_only_mlflow():
    # It starts once per process (experiments.tracking_writer) and imports mlflow_native for the
    # trace writes: DSPy and the rest there would be seconds more of start-up.
    code = ("import sys, experiments, experiments.tracking_writer, experiments.mlflow_native; "
            "print(','.join(m for m in ('dspy', 'litellm', 'duckdb', 'llama_cpp', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"the writer's imports loaded {out}"
