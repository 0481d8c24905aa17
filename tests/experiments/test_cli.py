"""The CLI's contract for bad input: one line naming file, line and field (or the valid
choices), exit status 2, and no MLflow run left behind in RUNNING state."""

import json

import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from experiments.cli import cli


def run(*args):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def no_running_runs():
    client = MlflowClient()
    experiments = client.search_experiments()
    runs = client.search_runs([e.experiment_id for e in experiments]) if experiments else []
    return all(r.info.status != "RUNNING" for r in runs)


def error_line(result):
    lines = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1, result.output
    return lines[0]


@pytest.fixture
def bad_files(tmp_path):
    good = '{"message": "x", "category": "billing", "reply": "a fine reply for you"}\n'
    files = {
        "malformed.jsonl": good + "{oops\n",
        "nofield.jsonl": good + '{"message": "x", "reply": "r"}\n',
        "badlabel.jsonl": good + good.replace("billing", "spam"),
        "data.txt": "hello\n",
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    return tmp_path


@pytest.mark.parametrize("args, expected", [
    (["compile", "triage", "-o", "bootstrap", "--trainset", "missing.jsonl"], "missing.jsonl: file not found"),
    (["compile", "triage", "-o", "bootstrap", "--trainset", "data.txt"], "data.txt: unsupported file type '.txt'"),
    (["compile", "triage", "-o", "bootstrap", "--trainset", "malformed.jsonl"], "malformed.jsonl:2: malformed JSON"),
    (["compile", "triage", "-o", "bootstrap", "--trainset", "nofield.jsonl"],
     "nofield.jsonl:2: field 'category': missing"),
    (["compile", "triage", "-o", "bootstrap", "--trainset", "badlabel.jsonl"],
     "badlabel.jsonl:2: field 'category': label 'spam' is not one of: billing, shipping, account, technical, refund"),
    (["compile", "triage", "-o", "bootstrap", "--valset", "malformed.jsonl"], "malformed.jsonl:2: malformed JSON"),
    (["compile", "nope", "-o", "bootstrap"], "unknown pipeline 'nope'"),
    (["compile", "triage", "-o", "simba"], "unknown optimizer 'simba'. Choose one of: labeled, bootstrap"),
    (["compile", "triage", "-o", "bootstrap", "-p", "max_demos=3"], "optimizer 'bootstrap' has no setting 'max_demos'"),
    (["compile", "triage", "-o", "bootstrap", "-p", "oops"], "--param 'oops': expected key=value"),
])
def test_bad_input_is_one_line_exit_2_and_no_running_run(bad_files, args, expected):
    result = run(*args, "--lm", "local")
    assert result.exit_code == 2, result.output
    assert expected in error_line(result)
    assert no_running_runs()


def test_user_pipeline_needs_a_trainset(tmp_path):
    path = tmp_path / "p.py"
    path.write_text("from programs.builtin import Triage as Mine\n")
    result = run("compile", f"{path}:Mine", "-o", "labeled", "--lm", "local")
    assert result.exit_code == 2 and "--trainset is required" in error_line(result)


def test_help_explains_the_command():
    result = run("compile", "--help")
    assert result.exit_code == 0
    for text in ("--trainset", "--valset", "--param", "--lm", "--api-base", "--seed", "--out", "--json",
                 "path/to/file.py:ClassName"):
        assert text in result.output


def test_optimizers_lists_every_one():
    result = run("optimizers")
    assert all(name in result.output for name in ("labeled", "bootstrap-rs", "mipro", "gepa"))


def test_bench_help_names_every_benchmark():
    from benchmarks import BENCHMARKS

    text = " ".join(run("bench", "--help").output.split())
    assert [name for name in BENCHMARKS if name not in text] == []


def test_runs_list_on_an_empty_store_is_a_clear_error():
    result = run("runs", "list", "--json")
    assert result.exit_code == 2 and "no MLflow experiment 'pipec'" in error_line(result)


def test_runs_list_json_after_a_compile(tmp_path):
    from experiments.compile import CompileOptions, compile_pipeline
    from tests.fakes import fake_lm, triage_respond

    lm, _ = fake_lm(triage_respond)
    result = compile_pipeline(CompileOptions("triage", "labeled", lm=lm, progress=False))
    listed = json.loads(run("runs", "list", "--json").output)
    assert [r["run_id"] for r in listed] == [result["run_id"]]
    assert listed[0]["status"] == "FINISHED"
    assert listed[0]["compiled_score"] == pytest.approx(result["compiled"]["score"])


def test_json_output_is_one_object_on_stdout(tmp_path, monkeypatch):
    """DSPy prints progress to stdout; the CLI keeps it off stdout so --json stays parseable."""
    from experiments import compile as compile_module
    from tests.fakes import fake_lm, triage_respond

    lm, _ = fake_lm(triage_respond)
    real = compile_module.make_lm
    monkeypatch.setattr(compile_module, "make_lm", lambda *a, **k: lm if a[0] == "scripted" else real(*a, **k))
    result = CliRunner().invoke(cli, ["compile", "triage", "-o", "bootstrap", "--lm", "scripted", "--json"])
    assert result.exit_code == 0, result.output
    parsed = json.loads(result.stdout)
    assert parsed["run_id"] and "Bootstrapped" in result.stderr


# An LM that cannot answer is an error, not a score of 0 (experiments.lm_errors, experiments.preflight).

def all_runs():
    client = MlflowClient()
    experiments = client.search_experiments()
    return client.search_runs([e.experiment_id for e in experiments]) if experiments else []


@pytest.mark.parametrize("args, line", [
    (["compile", "triage", "-o", "labeled", "--lm", "openai/gpt-4o-mini"],
     "Error: --lm openai/gpt-4o-mini: no API key: set OPENAI_API_KEY (or pass --lm local)"),
    (["compile", "triage", "-o", "labeled", "--lm", "nosuchprovider/model-x"],
     "Error: unknown provider 'nosuchprovider' in --lm nosuchprovider/model-x: use a LiteLLM model string such as "
     "openai/gpt-4o-mini"),
    (["evaluate", "triage", "--lm", "local", "--judge-lm", "nosuchprovider/j"],
     "Error: unknown provider 'nosuchprovider' in --judge-lm nosuchprovider/j: use a LiteLLM model string such as "
     "openai/gpt-4o-mini"),
])
def test_an_lm_that_cannot_answer_is_one_line_exit_2_and_no_run(monkeypatch, args, line):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    result = run(*args)
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines() == [line]
    assert all_runs() == []  # found by the preflight, before any run existed


def test_a_configuration_error_mid_run_fails_the_run_with_the_reason(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    result = run("compile", "triage", "-o", "labeled", "--lm", "openai/gpt-4o-mini", "--no-preflight")
    assert result.exit_code == 2, result.output
    assert error_line(result) == "Error: --lm openai/gpt-4o-mini: no API key: set OPENAI_API_KEY (or pass --lm local)"
    [failed] = all_runs()
    assert failed.info.status == "FAILED"
    assert failed.data.tags["pipec.failure.reason"] == "lm_auth"
    assert "no API key: set OPENAI_API_KEY" in failed.data.tags["pipec.failure"]
    assert not any(k.startswith("baseline.") for k in failed.data.metrics)  # no score was recorded


def test_help_says_the_preflight_happens():
    for command in ("compile", "evaluate"):
        text = " ".join(run(command, "--help").output.split())
        assert "--no-preflight" in text and "answers one tiny uncached request" in text
