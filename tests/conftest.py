"""Test isolation: every test runs in its own directory, MLflow store, pipec home and DSPy state."""

from __future__ import annotations

import dspy
import pytest


@pytest.fixture(scope="session", autouse=True)
def _no_dspy_disk_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    # A shared on-disk cache would let one test's LM answers leak into another's.
    dspy.configure_cache(enable_disk_cache=False, enable_memory_cache=False)


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """A fresh working directory, tracking store and pipec home; no LM settings leak in or out."""
    import mlflow

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("PIPEC_HOME", str(tmp_path / "pipec-home"))
    for name in ("PIPEC_LM", "PIPEC_API_BASE", "PIPEC_EXPERIMENT", "PIPEC_LOCAL_MODEL", "PIPEC_JUDGE_LM",
                 "PIPEC_LOCAL_THREADS"):
        monkeypatch.delenv(name, raising=False)
    with dspy.context(lm=None, adapter=None):
        yield tmp_path
    while mlflow.active_run() is not None:
        mlflow.end_run()


CHROMIUM = "/usr/bin/chromium"
"""Debian's chromium (.ci/run installs it with fonts-noto-cjk); Playwright drives it, no download."""


@pytest.fixture(scope="module")
def browser():
    """A headless chromium for browser tests; skipped, with how to install it, when it is missing."""
    from pathlib import Path

    if not Path(CHROMIUM).exists():
        pytest.skip(f"no browser at {CHROMIUM}: apt-get install -y chromium fonts-noto-cjk (.ci/run does)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install -e '.[dev]' (playwright)")
    with sync_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        yield chromium
        chromium.close()
