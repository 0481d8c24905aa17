"""`pipec demo` on a scripted LM: knn by default, on the classifier node only, with the settings
it ran said before the run and beside the table, recorded on the MLflow run as `pipec compile`
would record them."""

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from experiments.cli import cli
from programs.builtin import Triage
from tests.fakes import fake_lm, triage_respond


@pytest.fixture
def scripted(monkeypatch, tmp_path):
    """The demo's --lm resolved to the scripted triage LM; compiled programs land in tmp_path."""
    lm, engine = fake_lm(triage_respond)
    monkeypatch.setattr("experiments.compile.make_lm", lambda *args, **kwargs: lm)
    monkeypatch.chdir(tmp_path)
    return engine


def flat(text):
    return " ".join(text.split())  # rich wraps long lines at the terminal width


def only_run():
    client = MlflowClient()
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 1
    return runs[0]


def test_the_default_demo_is_knn_on_the_classifier_only(scripted):
    result = CliRunner().invoke(cli, ["demo"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    err, out = flat(result.stderr), flat(result.stdout)
    said = "demo: knn with --param nodes=classify --param k=4 --param max_lm_calls=0: node classify takes"
    assert said in err
    assert "pipec compile triage --optimizer knn --param nodes=classify --param k=4 --param max_lm_calls=0" in err
    for row in ("pipeline score", "node classify", "node reply"):
        assert row in out
    assert "knn ran with --param nodes=classify --param k=4 --param max_lm_calls=0: node classify takes" in out
    run = only_run()
    assert run.data.tags["pipec.demo"] == "true" and run.data.params["optimizer"] == "knn"
    settings = {k: run.data.params[f"optimizer.settings.init.{k}"] for k in ("nodes", "k", "max_lm_calls")}
    assert settings == {"nodes": "classify", "k": "4", "max_lm_calls": "0"}
    program = Triage()
    (path,) = Path("compiled").glob("triage-knn-*.json")
    program.load(str(path))
    assert program.classify.retrieval is not None and program.classify.retrieval.k == 4
    assert program.reply.retrieval is None and program.reply.demos == []  # zero-shot, as declared
    # Each compiled classify request carries 4 demos; each reply request none.
    reply_requests = [r for r in scripted.requests if "reply" in json.dumps(r.config.response_format or {})]
    assert reply_requests and all(sum(m.role == "user" for m in r.messages) == 1 for r in reply_requests)


def test_json_names_the_settings_and_other_optimizers_run_with_their_defaults(scripted):
    result = CliRunner().invoke(cli, ["demo", "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["optimizer"] == "knn" and payload["params"] == ["nodes=classify", "k=4", "max_lm_calls=0"]
    assert payload["compile"]["lm_calls"] == 0
    assert set(payload["baseline"]["nodes"]) == set(payload["compiled"]["nodes"]) == {"classify", "reply"}
    labeled = CliRunner().invoke(cli, ["demo", "--optimizer", "labeled", "--json"], catch_exceptions=False)
    assert labeled.exit_code == 0, labeled.output
    assert json.loads(labeled.stdout)["params"] == []
    assert "--param" not in flat(labeled.stderr)
