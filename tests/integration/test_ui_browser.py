"""The MLflow UI in a real headless browser (Debian's chromium driven by Playwright) on two compile
runs: the run page shows the run's datasets, registered prompts and logged model, a Japanese
instruction renders as Japanese, and the compare view opens. Screenshots are kept under
test-artifacts/ui/ (or $PIPEC_TEST_ARTIFACTS/ui/)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from experiments.compile import CompileOptions, compile_pipeline
from programs.builtin import builtin_dataset
from tests.conftest import CHROMIUM
from tests.fakes import fake_lm, triage_respond

pytestmark = pytest.mark.integration

ARTIFACTS = Path(os.environ.get("PIPEC_TEST_ARTIFACTS") or Path(__file__).resolve().parents[2] / "test-artifacts")
INSTRUCTION = "お客様への返信を、丁寧で具体的な日本語で短く書いてください。"
PIPELINE_FILE = f'''
from programs.builtin import Triage


class JaTriage(Triage):
    def __init__(self):
        super().__init__()
        self.reply.signature = self.reply.signature.with_instructions("{INSTRUCTION}")
'''


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for(url: str, server: subprocess.Popen, seconds: float = 240) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except OSError:
            assert server.poll() is None, "pipec ui exited"
            time.sleep(1)
    raise AssertionError(f"pipec ui did not answer within {seconds:.0f} s")


@pytest.fixture(scope="module")
def ui(tmp_path_factory):
    """Two tiny compiles on the scripted LM written in-process, then one MLflow server over them."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no browser at {CHROMIUM}: apt-get install -y chromium fonts-noto-cjk (.ci/run does)")
    root = tmp_path_factory.mktemp("ui")
    (root / "ja_triage.py").write_text(PIPELINE_FILE, encoding="utf-8")
    rows = builtin_dataset("triage").read_text(encoding="utf-8").splitlines()
    (root / "train.jsonl").write_text("\n".join(rows[:12]) + "\n", encoding="utf-8")
    (root / "val.jsonl").write_text("\n".join(rows[40:46]) + "\n", encoding="utf-8")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    runs = []
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        for optimizer in ("labeled", "bootstrap"):
            lm, _ = fake_lm(triage_respond)
            runs.append(compile_pipeline(CompileOptions(
                f"{root / 'ja_triage.py'}:JaTriage", optimizer, trainset=str(root / "train.jsonl"),
                valset=str(root / "val.jsonl"), lm=lm, progress=False)))
        mlflow.flush_trace_async_logging()
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "LITELLM_LOCAL_MODEL_COST_MAP"}
    env["MLFLOW_TRACKING_URI"] = uri
    server = subprocess.Popen([sys.executable, "-m", "experiments", "ui", "--port", str(port)], cwd=root, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_for(base + "/health", server)
        yield base, runs
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)


def _screenshot(page, name: str) -> Path:
    path = ARTIFACTS / "ui" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")
    return path


def _page(browser):
    page = browser.new_page(locale="ja-JP", viewport={"width": 1500, "height": 1100})
    page.set_default_timeout(120_000)
    return page


def test_run_page_shows_datasets_prompts_and_the_logged_model(ui, browser):
    base, runs = ui
    run = runs[1]
    page = _page(browser)
    page.goto(f"{base}/#/experiments/{run['experiment_id']}/runs/{run['run_id']}")
    # Registered prompts: this compile's versions (the second compile of the pipeline: v2).
    page.get_by_text("jatriage.classify (v2)").first.wait_for()
    page.get_by_text("jatriage.reply (v2)").first.wait_for()
    body = page.inner_text("body")
    # Datasets: the train set, and the val set behind "+1".
    assert "jatriage-train" in body and "Train" in body
    page.get_by_text("+1", exact=True).first.click()
    page.get_by_text("jatriage-val").first.wait_for()
    _screenshot(page, "run-page.png")
    # The logged model: the metrics table links each metric to it by name.
    model_id = MlflowClient(run["tracking_uri"]).get_run(run["run_id"]).outputs.model_outputs[0].model_id
    link = page.get_by_text("program", exact=True).first
    link.wait_for()
    href = link.evaluate("e => e.closest('a').getAttribute('href')")
    assert href == f"#/experiments/{run['experiment_id']}/models/{model_id}"
    page.goto(f"{base}/{href}")  # the link opens a new tab; the same page will do
    page.get_by_text(model_id).first.wait_for()
    assert "program" in page.inner_text("body")
    _screenshot(page, "logged-model.png")
    page.close()


def test_registered_prompt_renders_the_japanese_instruction(ui, browser):
    base, _ = ui
    page = _page(browser)
    page.goto(f"{base}/#/prompts/jatriage.reply")
    page.get_by_text(INSTRUCTION[:10]).first.wait_for()
    assert INSTRUCTION in page.inner_text("body")
    _screenshot(page, "prompt-page.png")
    page.close()


def test_compare_view_of_the_two_runs(ui, browser):
    base, runs = ui
    ids = json.dumps([r["run_id"] for r in runs])
    page = _page(browser)
    page.goto(f"{base}/#/compare-runs?runs={ids}&experiments={json.dumps([runs[0]['experiment_id']])}")
    page.get_by_text("JaTriage-labeled").first.wait_for()  # both runs' names head the comparison
    page.get_by_text("JaTriage-bootstrap").first.wait_for()
    _screenshot(page, "compare-runs.png")
    page.close()


def test_compare_report_artifact_opens_on_run_b(ui, browser, monkeypatch):
    base, runs = ui
    uri = runs[0]["tracking_uri"]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    from experiments.compare import compare_html, compare_runs, log_compare_html

    result = compare_runs(runs[0]["run_id"], runs[1]["run_id"])
    path = log_compare_html(result, compare_html(result))
    page = _page(browser)
    run = runs[1]
    page.goto(f"{base}/#/experiments/{run['experiment_id']}/runs/{run['run_id']}/artifacts/{path}")
    frame = page.frame_locator("iframe").first
    frame.get_by_text("Examples (regressions first)").wait_for()
    _screenshot(page, "compare-report.png")
    page.close()
