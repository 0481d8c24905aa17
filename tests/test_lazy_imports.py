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
