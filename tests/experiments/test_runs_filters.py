"""pipec runs list filters and cost, pipec runs show, and --max-cost on real compile runs."""

import json
from datetime import UTC, datetime, timedelta

import dspy
import pytest
from click.testing import CliRunner

from experiments.cli import cli
from experiments.compile import CompileOptions, compile_pipeline
from experiments.lm import LMConfig
from experiments.runs import list_runs, parse_since, show_run
from programs.builtin import Triage
from programs.errors import ConfigError
from tests.fakes import ScriptedEngine, fake_lm, triage_respond


@pytest.fixture
def two_runs():
    labeled = compile_pipeline(CompileOptions("triage", "labeled", lm=fake_lm(triage_respond)[0], progress=False,
                                              mlflow_model=False))
    bootstrap = compile_pipeline(CompileOptions("triage", "bootstrap", lm=fake_lm(triage_respond)[0],
                                                progress=False, mlflow_records=False, mlflow_model=False))
    return labeled, bootstrap


def test_list_filters_and_cost(two_runs):
    labeled, bootstrap = two_runs
    assert [r["run_id"] for r in list_runs("pipec")] == [bootstrap["run_id"], labeled["run_id"]]
    assert [r["run_id"] for r in list_runs("pipec", optimizer="labeled")] == [labeled["run_id"]]
    assert [r["run_id"] for r in list_runs("pipec", pipeline="triage", status="finished")] == \
        [bootstrap["run_id"], labeled["run_id"]]
    assert list_runs("pipec", pipeline="sql") == [] and list_runs("pipec", status="FAILED") == []
    assert list_runs("pipec", since=datetime.now(UTC) + timedelta(hours=1)) == []
    assert len(list_runs("pipec", since=parse_since("1h"))) == 2
    result = CliRunner().invoke(cli, ["runs", "list", "--json", "--optimizer", "bootstrap"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [r["run_id"] for r in rows] == [bootstrap["run_id"]]
    assert rows[0]["cost_usd"] == 0.0 == bootstrap["cost"]["usd"]  # the scripted LM, like the embedded one, is free


def test_since_and_status_reject_bad_values_with_one_line():
    assert parse_since("2026-11-25") == datetime(2026, 11, 25, tzinfo=UTC)
    with pytest.raises(ConfigError, match="--since 'yesterday'"):
        parse_since("yesterday")
    result = CliRunner().invoke(cli, ["runs", "list", "--since", "yesterday"])
    assert result.exit_code == 2 and "--since" in result.output


def test_show_has_params_scores_per_node_cost_and_records(two_runs):
    labeled, _ = two_runs
    run = show_run(labeled["run_id"])
    assert run["pipeline"] == "triage" and run["optimizer"] == "labeled" and run["kind"] == "compile"
    assert run["scores"]["compiled"]["score"] == pytest.approx(labeled["compiled"]["score"])
    assert run["scores"]["compiled"]["nodes"] == pytest.approx(labeled["compiled"]["nodes"])
    assert run["cost"]["usd"] == 0.0 and set(run["cost"]["phases"]) == {"baseline", "compile", "compiled"}
    assert {d["name"] for d in run["datasets"]} == {"triage-train", "triage-val"}
    assert {p["name"] for p in run["prompts"]} == {"triage.classify", "triage.reply"}
    assert "evaluation/compiled.jsonl" in run["artifacts"] and run["params"]["seed"] == "0"
    result = CliRunner().invoke(cli, ["runs", "show", labeled["run_id"]])
    assert result.exit_code == 0 and "triage-train" in result.stdout and "cost $0.0000" in result.stdout
    assert CliRunner().invoke(cli, ["runs", "show", "nope"]).exit_code == 2


def test_max_cost_stops_a_dspy_optimizer_and_keeps_the_program_it_started_from():
    engine = ScriptedEngine(triage_respond)  # priced as gpt-4o-mini: 10 prompt + 5 completion tokens a call
    lm = LMConfig(dspy.LM("openai/gpt-4o-mini", engine=engine, cache=False, temperature=0.0), dspy.JSONAdapter(),
                  {"model": "openai/gpt-4o-mini", "temperature": 0.0}, None)
    result = compile_pipeline(CompileOptions("triage", "bootstrap", lm=lm, progress=False, max_cost=1e-6,
                                             preflight=False, mlflow_records=False, mlflow_model=False))
    assert result["cost"]["phases"]["compile"] <= 1e-6 + 1e-5  # at most one call past the cap
    assert result["cost"]["usd"] > 0
    program = Triage()
    program.load(result["program_path"])
    assert program.classify.demos == []  # the uncompiled program: bootstrap keeps no partial result
    run = show_run(result["run_id"])
    assert "--max-cost $1e-06 reached" in run["params"]["optimizer.stopped"]
