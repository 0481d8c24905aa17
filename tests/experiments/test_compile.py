"""Compile runs end to end on a scripted LM, with real MLflow and DuckDB."""

import json
import textwrap

import pytest
from mlflow.tracking import MlflowClient

from experiments.compile import CompileOptions, compile_pipeline
from programs.builtin import SqlQA, Triage, builtin_dataset
from tests.fakes import fake_lm, triage_respond


def artifacts(client, run_id, path=""):
    found = []
    for item in client.list_artifacts(run_id, path):
        found += artifacts(client, run_id, item.path) if item.is_dir else [item.path]
    return found


@pytest.fixture
def triage_run():
    lm, engine = fake_lm(triage_respond)
    result = compile_pipeline(CompileOptions("triage", "bootstrap", lm=lm, seed=3, progress=False))
    return result, engine


def test_result_has_scores_per_node_and_the_program(triage_run):
    result, engine = triage_run
    assert set(result["baseline"]["nodes"]) == set(result["compiled"]["nodes"]) == {"classify", "reply"}
    assert 0.0 <= result["baseline"]["score"] <= 1.0
    assert result["valset"]["source"].startswith("split of the trainset (seed 3)")
    # Every LM call the run made is accounted for in one of its three phases.
    counted = result["baseline"]["lm_calls"] + result["compile"]["lm_calls"] + result["compiled"]["lm_calls"]
    assert counted == len(engine.requests) > 0
    program = Triage()
    program.load(result["program_path"])
    assert len(program.classify.demos) > 0


def test_the_mlflow_run_holds_params_metrics_and_artifacts(triage_run):
    result, _ = triage_run
    client = MlflowClient()
    run = client.get_run(result["run_id"])
    assert run.info.status == "FINISHED"
    params, metrics = run.data.params, run.data.metrics
    for key in ("pipeline", "optimizer", "seed", "lm.model", "lm.temperature",
                "optimizer.settings.init.max_bootstrapped_demos", "trainset.size", "trainset.sha256",
                "valset.size", "version.pipec", "version.dspy", "version.mlflow"):
        assert key in params, key
    assert params["pipeline"] == "triage" and params["optimizer"] == "bootstrap" and params["seed"] == "3"
    for key in ("baseline.score", "compiled.score", "baseline.node.classify.score", "compiled.node.reply.score",
                "compile.lm_calls", "compile.tokens", "lm_calls", "tokens"):
        assert key in metrics, key
    assert metrics["compiled.score"] == pytest.approx(result["compiled"]["score"])
    files = artifacts(client, result["run_id"])
    assert "prompts/classify.txt" in files and "prompts/reply.txt" in files
    assert any(f.startswith("program/") and f.endswith(".json") for f in files)
    assert "evaluation/compiled.jsonl" in files
    prompt = client.download_artifacts(result["run_id"], "prompts/classify.txt")
    text = open(prompt, encoding="utf-8").read()
    assert "{message}" in text and "Classify the customer support message" in text



def test_sql_codegen_scores_come_from_executing_sql():
    rows = [json.loads(line) for line in builtin_dataset("sql").read_text(encoding="utf-8").splitlines()]
    known = {row["question"]: row["sql"] for row in rows[::2]}  # the fake knows every other gold query

    def respond(fields, inputs):
        answer = {}
        if "sql" in fields:
            answer["sql"] = known.get(inputs.get("question", ""), "select missing_column from orders")
        if "answer" in fields:
            answer["answer"] = "The answer is in the query result."
        return answer

    lm, _ = fake_lm(respond)
    result = compile_pipeline(CompileOptions("sql", "labeled", lm=lm, progress=False))
    client = MlflowClient()
    evaluated = client.download_artifacts(result["run_id"], "evaluation/baseline.jsonl")
    lines = [json.loads(line) for line in open(evaluated, encoding="utf-8")]
    expected = sum(line["inputs"]["question"] in known for line in lines) / len(lines)
    assert result["baseline"]["nodes"]["generate"] == pytest.approx(expected)
    failing = [line for line in lines if line["inputs"]["question"] not in known]
    assert failing and all("missing_column" in line["nodes"]["generate"]["feedback"] for line in failing)
    assert SqlQA().nodes().keys() == result["compiled"]["nodes"].keys()


def test_user_pipeline_outside_the_repository(tmp_path):
    (tmp_path / "my_pipeline.py").write_text(textwrap.dedent('''
        import dspy
        from programs import Classifier, Pipeline

        class MyPipeline(Pipeline):
            inputs = ("message",)
            gold = {"route": "category"}

            def __init__(self):
                super().__init__()
                self.route = Classifier("message", output="category",
                                        labels=["billing", "shipping", "account", "technical", "refund"])

            def forward(self, message):
                return dspy.Prediction(category=self.route(message=message).category)
    '''))
    lm, _ = fake_lm(triage_respond)
    result = compile_pipeline(CompileOptions("./my_pipeline.py:MyPipeline", "labeled", lm=lm, progress=False,
                                             trainset=str(builtin_dataset("triage"))))
    assert set(result["compiled"]["nodes"]) == {"route"}
    assert MlflowClient().get_run(result["run_id"]).data.params["pipeline"] == "./my_pipeline.py:MyPipeline"


def test_a_failing_compile_leaves_a_failed_run_not_a_running_one():
    def respond(fields, inputs):
        raise RuntimeError("provider down")

    lm, _ = fake_lm(respond)
    with pytest.raises(Exception):  # noqa: B017 - any error; the point is the run's final status
        compile_pipeline(CompileOptions("triage", "bootstrap", lm=lm, progress=False,
                                        params=["max_errors=0"]))
    client = MlflowClient()
    runs = client.search_runs([client.get_experiment_by_name("pipec").experiment_id])
    assert runs and {r.info.status for r in runs} == {"FAILED"}


def test_japanese_survives_the_program_and_the_artifacts(tmp_path):
    def respond(fields, inputs):
        return {"category": "shipping", "reply": "ご連絡ありがとうございます。本日中に発送状況を確認します。"}

    lm, _ = fake_lm(respond)
    result = compile_pipeline(CompileOptions("triage", "labeled", lm=lm, progress=False))
    client = MlflowClient()
    path = client.download_artifacts(result["run_id"], "evaluation/compiled.jsonl")
    text = open(path, encoding="utf-8").read()
    assert "本日中に発送状況を確認します" in text


def test_per_node_reports_and_the_verdicts_table(triage_run):
    result, _ = triage_run
    client = MlflowClient()
    metrics = client.get_run(result["run_id"]).data.metrics
    for stage in ("baseline", "compiled"):
        for key in ("node.classify.macro_f1", "node.classify.label.refund.f1", "node.classify.label.billing.precision",
                    "node.reply.pass_rate", "judge_failures"):
            assert f"{stage}.{key}" in metrics, f"{stage}.{key}"
    files = artifacts(client, result["run_id"])
    assert {"evaluation/compiled_verdicts.json", "evaluation/compiled_classify_confusion.png",
            "evaluation/compiled_classify_classification.json"} <= set(files)
    table = json.load(open(client.download_artifacts(result["run_id"], "evaluation/baseline_verdicts.json")))
    failed = [dict(zip(table["columns"], row, strict=True)) for row in table["data"] if not row[5]]
    assert failed and all(row["feedback"] for row in failed)
    saved = json.load(open(result["program_path"], encoding="utf-8"))
    assert saved["metadata"]["pipec"] == {"pipeline": "triage", "class": "programs.builtin.Triage"}


def test_textual_optimizer_with_a_prompt_lm_child_runs_and_best_score_trajectory():
    """--prompt-lm: the prompt writer's calls go to their own LM; each candidate is a child run
    tagged with its id, parent and step; best_score by step is the parent's trajectory."""
    from tests.optimizers.scripted import requests_for, scripted_lm

    lm, engine, _ = scripted_lm()
    prompt, prompt_engine, _ = scripted_lm({"new_instruction": "GOOD: route by the team that must act."})
    result = compile_pipeline(CompileOptions("triage", "opro", lm=lm, prompt_lm=prompt, seed=0, progress=False,
                                             params=("steps=2", "candidates_per_step=1", "max_lm_calls=150",
                                                     "nodes=classify")))
    assert len(requests_for(prompt_engine, "new_instruction")) == 2 and not requests_for(engine, "new_instruction")
    assert result["compile"]["lm_calls"] <= 150
    assert result["compiled"]["nodes"]["classify"] > result["baseline"]["nodes"]["classify"]
    client = MlflowClient()
    run = client.get_run(result["run_id"])
    assert run.data.params["prompt_lm"] == "fake/scripted"
    history = client.get_metric_history(result["run_id"], "best_score")
    steps = sorted((m.step, m.value) for m in history)
    assert [s for s, _ in steps] == list(range(len(steps))) and len(steps) >= 2
    assert [v for _, v in steps] == sorted(v for _, v in steps) and steps[-1][1] > steps[0][1]
    children = client.search_runs([run.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{result['run_id']}'")
    tagged = {c.data.tags.get("pipec.candidate"): c for c in children if c.data.tags.get("pipec.origin")}
    assert tagged["c1"].data.tags["pipec.parent"] == "c0" and tagged["c1"].data.tags["pipec.step"] == "1"
    assert "GOOD" in tagged["c1"].data.params["classify.instructions"]
    params = run.data.params
    assert params["optimizer.chosen.budget.max_lm_calls"] == "150"
    assert int(params["optimizer.chosen.budget.lm_calls"]) == result["compile"]["lm_calls"]  # each call once
