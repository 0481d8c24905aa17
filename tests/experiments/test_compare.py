"""pipec runs compare: two real compile runs in a real MLflow store, compared node by node."""

import json

import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from experiments.cli import cli
from experiments.compare import compare_html, compare_runs
from experiments.compile import CompileOptions, compile_pipeline
from programs.builtin import builtin_dataset
from programs.errors import ConfigError
from tests.fakes import fake_lm, triage_respond

_GOLD = {json.loads(line)["message"]: json.loads(line)["category"]
         for line in builtin_dataset("triage").read_text(encoding="utf-8").splitlines()}


def _shifted_respond(fields, inputs):
    """Another classifier: the gold label on some messages (wins where the keywords miss), a wrong
    one on others (losses); a Japanese reply to Japanese messages."""
    answer = triage_respond(fields, inputs)
    message = inputs.get("message", "")
    if "category" in fields and message in _GOLD:
        gold = _GOLD[message]
        answer["category"] = gold if len(message) % 2 == 0 else ("refund" if gold != "refund" else "billing")
    if "reply" in fields and any(ord(c) > 0x3000 for c in message):
        answer["reply"] = "ありがとうございます。担当チームが本日中に対応いたします。確認後ご連絡します。"
    return answer


@pytest.fixture
def two_runs(tmp_path):
    rows = builtin_dataset("triage").read_text(encoding="utf-8").splitlines()
    train, val = tmp_path / "train.jsonl", tmp_path / "val.jsonl"
    train.write_text("\n".join(rows[:14]) + "\n", encoding="utf-8")
    val.write_text("\n".join(rows[30:50]) + "\n", encoding="utf-8")
    reversed_val = tmp_path / "val_reversed.jsonl"  # B sees the examples in another order: match by input
    reversed_val.write_text("\n".join(reversed(rows[30:50])) + "\n", encoding="utf-8")
    lm_a, _ = fake_lm(triage_respond)
    a = compile_pipeline(CompileOptions("triage", "labeled", trainset=str(train), valset=str(val), lm=lm_a,
                                        progress=False, mlflow_records=False, mlflow_model=False))
    lm_b, _ = fake_lm(_shifted_respond)
    b = compile_pipeline(CompileOptions("triage", "bootstrap", trainset=str(train), valset=str(reversed_val),
                                        lm=lm_b, progress=False, mlflow_records=False, mlflow_model=False))
    return a["run_id"], b["run_id"]


def _artifact_rows(run_id):
    path = MlflowClient().download_artifacts(run_id, "evaluation/compiled.jsonl")
    return [json.loads(line) for line in open(path, encoding="utf-8")]


def test_wins_and_losses_match_the_per_example_artifacts(two_runs):
    run_a, run_b = two_runs
    result = compare_runs(run_a, run_b)
    by_input_a = {json.dumps(r["inputs"], sort_keys=True): r for r in _artifact_rows(run_a)}
    by_input_b = {json.dumps(r["inputs"], sort_keys=True): r for r in _artifact_rows(run_b)}
    assert result["counts"]["paired"] == 20 and result["counts"]["only_a"] == result["counts"]["only_b"] == 0
    expected = {"win": 0, "loss": 0, "tie": 0}
    for example in result["examples"]:
        key = json.dumps(example["inputs"], sort_keys=True)
        a, b = by_input_a[key]["score"], by_input_b[key]["score"]
        outcome = "win" if b > a else "loss" if b < a else "tie"
        assert example["outcome"] == outcome
        assert example["a"]["outputs"] == by_input_a[key]["outputs"]
        assert example["b"]["outputs"] == by_input_b[key]["outputs"]
        assert example["nodes"]["classify"]["b"]["feedback"] == by_input_b[key]["nodes"]["classify"]["feedback"]
        expected[outcome] += 1
    assert {k: result["counts"][k] for k in expected} == expected
    assert expected["win"] > 0 and expected["loss"] > 0  # the fixture really differs both ways
    outcomes = [e["outcome"] for e in result["examples"]]
    assert outcomes == sorted(outcomes, key=["loss", "win", "tie", "not comparable"].index)  # regressions first
    # The delta and its interval: the paired mean difference of the artifacts' scores.
    keys = list(by_input_a)
    delta = sum(by_input_b[k]["score"] - by_input_a[k]["score"] for k in keys) / len(keys)
    overall = result["overall"]
    assert overall["delta"] == pytest.approx(delta) and overall["n"] == 20
    assert overall["low"] <= overall["delta"] <= overall["high"]
    assert set(result["nodes"]) == {"classify", "reply"}
    for node in result["nodes"].values():
        assert node["low"] is not None and node["win"] + node["loss"] + node["tie"] <= 20


def test_prompt_diffs_show_the_demos_each_run_chose(two_runs):
    run_a, run_b = two_runs
    prompts = compare_runs(run_a, run_b)["prompts"]
    assert set(prompts) == {"classify", "reply"}
    classify = prompts["classify"]
    assert classify["instructions"]["changed"] is False and classify["instructions"]["diff"] == []
    assert classify["demos"]["a"] > 0  # labeled demos in A
    assert classify["demos"]["a"] - classify["demos"]["kept"] == len(classify["demos"]["removed"])
    assert classify["demos"]["b"] - classify["demos"]["kept"] == len(classify["demos"]["added"])


def test_html_is_escaped_utf8_and_logged_on_run_b(two_runs, tmp_path):
    run_a, run_b = two_runs
    out = tmp_path / "compare.html"
    result = CliRunner().invoke(cli, ["runs", "compare", run_a, run_b, "--json", "--html", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["html_artifact"] == f"compare/vs-{run_a}.html"
    page = out.read_text(encoding="utf-8")
    assert "<meta charset='utf-8'>" in page and "担当チーム" in page and "請求書" in page
    assert "<script" not in page
    logged = MlflowClient().download_artifacts(run_b, data["html_artifact"])
    assert open(logged, encoding="utf-8").read() == page


def test_html_escapes_what_it_shows():
    result = {"runs": {s: {"run_id": "r" * 32, "run_name": "<b>x</b>", "pipeline": "p", "optimizer": "o",
                           "lm": "m", "stage": "compiled", "score": None} for s in "ab"},
              "level": 0.95, "seed": 0,
              "overall": {"a": 1.0, "b": 0.0, "delta": -1.0, "low": -1.0, "high": -1.0, "n": 1},
              "nodes": {}, "prompts": {"n": {"instructions": {"a": "", "b": "<script>", "changed": True,
                                                              "diff": ["+<script>alert(1)</script>"]},
                                             "demos": {"a": 0, "b": 0, "kept": 0, "added": [], "removed": []}}},
              "counts": {"win": 0, "loss": 1, "tie": 0, "not_comparable": 0, "paired": 1, "only_a": 0, "only_b": 0},
              "examples": [{"outcome": "loss", "delta": -1.0, "inputs": {"m": "<img src=x>"},
                            "a": {"score": 1.0, "outputs": {"o": "&"}, "error": None},
                            "b": {"score": 0.0, "outputs": None, "error": "E: <bad>"}, "nodes": {}}],
              "only_a": [], "only_b": []}
    page = compare_html(result)
    assert "<script>" not in page and "<img" not in page and "&lt;script&gt;" in page and "&lt;bad&gt;" in page


def test_unknown_run_is_one_clear_error(two_runs):
    with pytest.raises(ConfigError, match="no MLflow run 'nope'"):
        compare_runs("nope", two_runs[1])
    result = CliRunner().invoke(cli, ["runs", "compare", "nope", two_runs[1]])
    assert result.exit_code == 2 and "pipec runs list" in result.output
