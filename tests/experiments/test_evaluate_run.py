"""Evaluate runs end to end on scripted LMs, with real MLflow and DuckDB, through the API and the CLI."""

import json
import shutil
import textwrap

import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from experiments import evaluate_run as evaluate_module
from experiments.cli import cli
from experiments.compile import CompileOptions, compile_pipeline
from experiments.evaluate_run import EvaluateOptions, evaluate_pipeline
from programs.errors import PipelineError
from tests.fakes import _text, fake_lm, triage_respond


def test_a_builtin_pipeline_on_its_bundled_dataset():
    lm, _ = fake_lm(triage_respond)
    result = evaluate_pipeline(EvaluateOptions("triage", lm=lm, progress=False))
    assert result["devset"]["size"] == 50 and result["program"] is None
    classify = result["nodes"]["classify"]
    assert set(classify["labels"]) == {"billing", "shipping", "account", "technical", "refund"}
    assert classify["score"] == pytest.approx(classify["accuracy"])
    run = MlflowClient().get_run(result["run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["pipec.kind"] == "evaluate"
    assert run.data.metrics["evaluate.node.classify.macro_f1"] == pytest.approx(classify["macro_f1"])
    assert run.data.metrics["evaluate.score"] == pytest.approx(result["score"])
    assert run.data.params["program"] == "(uncompiled)" and run.data.params["devset.size"] == "50"


def test_a_compiled_program_knows_its_pipeline(tmp_path):
    lm, _ = fake_lm(triage_respond)
    compiled = compile_pipeline(CompileOptions("triage", "labeled", lm=lm, progress=False))
    result = evaluate_pipeline(EvaluateOptions(compiled["program_path"], lm=lm, progress=False))
    assert result["pipeline"] == "triage" and result["program"] == compiled["program_path"]
    files = {f.path for f in MlflowClient().list_artifacts(result["run_id"], "program")}
    assert files == {f"program/{compiled['program_path'].rsplit('/', 1)[-1]}"}

    bare = tmp_path / "bare.json"
    state = json.loads(open(compiled["program_path"], encoding="utf-8").read())
    del state["metadata"]["pipec"]
    bare.write_text(json.dumps(state), encoding="utf-8")
    with pytest.raises(PipelineError, match=r"does not record its pipeline.*pass --pipeline"):
        evaluate_pipeline(EvaluateOptions(str(bare), lm=lm))
    assert evaluate_pipeline(EvaluateOptions(str(bare), pipeline="triage", lm=lm, progress=False))["score"] >= 0
    with pytest.raises(PipelineError, match="does not fit pipeline 'sql'"):
        evaluate_pipeline(EvaluateOptions(str(bare), pipeline="sql", lm=lm))


def test_judge_failures_are_counted_not_scored():
    lm, _ = fake_lm(triage_respond)
    judge, _ = fake_lm(lambda fields, inputs: {"judgement": {"score": 2.0, "comment": "?"}})
    source = textwrap.dedent('''
        from programs.builtin import Triage

        class Judged(Triage):
            def __init__(self):
                super().__init__()
                self.reply.rules["rubric"] = "Polite and concrete."
    ''')
    with open("judged.py", "w", encoding="utf-8") as handle:
        handle.write(source)
    devset = "\n".join(open(_triage(), encoding="utf-8").read().splitlines()[:4]) + "\n"
    with open("dev.jsonl", "w", encoding="utf-8") as handle:
        handle.write(devset)
    result = evaluate_pipeline(EvaluateOptions("judged.py:Judged", devset="dev.jsonl", lm=lm, judge_lm=judge,
                                               progress=False))
    assert result["judge_failures"] == 4 and result["nodes"]["reply"]["judge_failures"] == 4
    assert result["nodes"]["reply"]["score"] == 1.0 and result["nodes"]["reply"]["pass_rate"] == 0.0
    assert MlflowClient().get_run(result["run_id"]).data.metrics["evaluate.judge_failures"] == 4


def _triage():
    from programs.builtin import builtin_dataset

    return builtin_dataset("triage")


JAPANESE_PIPELINE = '''
import dspy
from programs import Classifier, Pipeline, Writer

class JaSupport(Pipeline):
    inputs = ("message",)
    gold = {"classify": "category", "reply": "reply"}

    def __init__(self):
        super().__init__()
        self.classify = Classifier("message", output="category", labels=["請求", "配送"])
        self.reply = Writer("message, category", output="reply",
                            rules={"language": "ja", "max_words": 40, "banned_phrases": True, "format": "text",
                                   "rubric": "丁寧にお詫びし、次の対応を具体的に伝える。"})

    def forward(self, message):
        category = self.classify(message=message).category
        return dspy.Prediction(category=category, reply=self.reply(message=message, category=category).reply)
'''
REPLY = "ご連絡ありがとうございます。本日中に発送状況を確認し、ご連絡いたします。"
COMMENT = "お詫びの言葉がありません。"


def test_japanese_passes_through_rules_judge_mlflow_and_the_cli(tmp_path, monkeypatch):
    (tmp_path / "ja.py").write_text(JAPANESE_PIPELINE, encoding="utf-8")
    rows = [{"message": "請求書が二重に届きました。", "category": "請求", "reply": "申し訳ございません。"},
            {"message": "荷物がまだ届きません。", "category": "配送", "reply": "申し訳ございません。確認します。"}]
    (tmp_path / "ja.jsonl").write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n",
                                       encoding="utf-8")
    task, _ = fake_lm(lambda fields, inputs: {"category": "請求", "reply": REPLY})
    judge, judge_engine = fake_lm(lambda fields, inputs: {"judgement": {"score": 0.6, "comment": COMMENT}})
    monkeypatch.setattr(evaluate_module, "make_lm", lambda spec, **_: {"task": task, "judge": judge}[spec])

    done = CliRunner().invoke(cli, ["evaluate", "ja.py:JaSupport", "--devset", "ja.jsonl", "--lm", "task",
                                    "--judge-lm", "judge", "--json"])
    assert done.exit_code == 0, done.output
    assert "請求" in done.stdout  # unescaped on stdout
    result = json.loads(done.stdout)
    reply, classify = result["nodes"]["reply"], result["nodes"]["classify"]
    assert reply["pass_rate"] == 1.0 and reply["score"] == pytest.approx((1 + 1 + 1 + 1 + 0.6) / 5)
    assert classify["labels"]["請求"]["precision"] == 0.5 and classify["labels"]["配送"]["recall"] == 0.0

    judged = "\n".join(_text(m.parts) for m in judge_engine.requests[0].messages)
    assert REPLY in judged and "丁寧にお詫びし" in judged and "申し訳ございません。" in judged

    client = MlflowClient()
    run_id = result["run_id"]
    assert client.get_run(run_id).data.metrics["evaluate.node.classify.label.請求.f1"] == pytest.approx(2 / 3)
    table = json.load(open(client.download_artifacts(run_id, "evaluation/evaluate_verdicts.json"), encoding="utf-8"))
    rows = [dict(zip(table["columns"], row, strict=True)) for row in table["data"]]
    replies = [r for r in rows if r["node"] == "reply"]
    assert [r["output"] for r in replies] == [REPLY, REPLY]
    assert all(r["feedback"] == f"the judge scored it 0.60: {COMMENT}" for r in replies)
    report = client.download_artifacts(run_id, "evaluation/evaluate_classify_classification.json")
    assert '"請求"' in open(report, encoding="utf-8").read()


@pytest.mark.parametrize("args, expected", [
    (["evaluate", "triage", "--devset", "missing.jsonl"], "missing.jsonl: file not found"),
    (["evaluate", "triage", "--devset", "bad.jsonl"], "bad.jsonl:2: field 'category': missing"),
    (["evaluate", "nope"], "unknown pipeline 'nope'"),
    (["evaluate", "gone.json"], "gone.json: program file not found"),
    (["evaluate", "plain.json"], "plain.json: the program does not record its pipeline"),
    (["evaluate", "triage", "--pipeline", "sql"], "--pipeline applies to a saved program"),
    (["evaluate", "mine.py:Mine"], "--devset is required for a pipeline that is not built in"),
    (["evaluate", "rules.py:Rules", "--devset", "good.jsonl"],
     "Rules.reply: unknown rule 'max_wrds' for a writer node. Did you mean 'max_words'?"),
])
def test_bad_input_is_one_line_exit_2_and_no_run(tmp_path, args, expected):
    good = '{"message": "x", "category": "billing", "reply": "a fine reply for you"}\n'
    (tmp_path / "good.jsonl").write_text(good, encoding="utf-8")
    (tmp_path / "bad.jsonl").write_text(good + '{"message": "x", "reply": "r"}\n', encoding="utf-8")
    (tmp_path / "plain.json").write_text('{"classify": {}, "metadata": {}}', encoding="utf-8")
    (tmp_path / "mine.py").write_text("from programs.builtin import Triage as Mine\n", encoding="utf-8")
    (tmp_path / "rules.py").write_text(textwrap.dedent('''
        from programs.builtin import Triage

        class Rules(Triage):
            def __init__(self):
                super().__init__()
                self.reply.rules["max_wrds"] = 3
    '''), encoding="utf-8")
    done = CliRunner().invoke(cli, [*args, "--lm", "local"])
    assert done.exit_code == 2, done.output
    lines = [line for line in done.output.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1 and expected in lines[0], done.output
    client = MlflowClient()
    experiments = client.search_experiments()
    assert not experiments or not client.search_runs([e.experiment_id for e in experiments])


def test_the_terminal_table(monkeypatch):
    lm, _ = fake_lm(triage_respond)
    monkeypatch.setattr(evaluate_module, "make_lm", lambda spec, **_: lm)
    shutil.copy(_triage(), "dev.jsonl")
    done = CliRunner().invoke(cli, ["evaluate", "triage", "--devset", "dev.jsonl", "--lm", "x"])
    assert done.exit_code == 0, done.output
    assert "classify: macro-F1" in done.stdout and "refund" in done.stdout and "MLflow run:" in done.stdout
