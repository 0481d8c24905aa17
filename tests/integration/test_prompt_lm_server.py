"""--prompt-lm through a real OpenAI-compatible server (llama-cpp-python's, serving the embedded
GGUF on 127.0.0.1; the server fixture of ``test_openai_server``): a textual optimizer's prompt
writer calls the server, the compile stays within its LM-call budget, and the run records it."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from experiments.cli import cli
from tests.integration.test_openai_server import MODEL, SMALL, LlamaServer, runs, write_data

pytestmark = pytest.mark.integration

BUDGET = 8


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = LlamaServer(tmp_path_factory.mktemp("server") / "server.log")
    yield srv
    srv.stop()


def test_opro_writes_prompts_through_the_server_within_its_budget(server, tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    for name, value in SMALL.items():
        monkeypatch.setenv(name, value)
    train, val = write_data(tmp_path)
    args = ["compile", "triage", "-o", "opro", "--lm", f"openai/{MODEL}", "--api-base", server.base,
            "--prompt-lm", f"openai/{MODEL}", "--trainset", str(train), "--valset", str(val), "--threads", "1",
            "-p", "steps=1", "-p", "candidates_per_step=1", "-p", f"max_lm_calls={BUDGET}", "-p", "val_size=0",
            "-p", "nodes=classify", "--no-cache", "--json"]
    before = server.posts
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert 0 < out["compile"]["lm_calls"] <= BUDGET
    # Baseline and compiled evaluations, the preflight, and the compile: every call went to the server.
    assert server.posts - before >= out["compile"]["lm_calls"] + out["baseline"]["lm_calls"]
    assert out["compiled"]["score"] >= out["baseline"]["score"]
    [run] = [r for r in runs(uri) if r.data.tags.get("pipec.kind") == "compile"]
    assert run.data.params["prompt_lm"] == f"openai/{MODEL}"
    assert int(run.data.params["optimizer.chosen.budget.lm_calls"]) == out["compile"]["lm_calls"]
    assert run.data.params["optimizer.chosen.budget.max_lm_calls"] == str(BUDGET)
