"""Closing the loop: the store's reviewed traces as a trainset (`pipec export`, `--trainset store:`),
compiled with the scripted LM and recorded in a real MLflow store."""

import json

import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from experiments.cli import cli
from experiments.compile import CompileOptions, compile_pipeline
from experiments.datasets import load_dataset
from experiments.store import SCHEMA_VERSION, Store, StoreFilter, export_rows, parse_store_spec, trace_ids_digest
from metrics.verdict import Verdict
from programs.builtin import Triage
from programs.errors import DatasetError
from tests.fakes import fake_lm, triage_respond
from tests.store_traces import DAY1, DAY2, triage_trace

MESSAGES = [
    ("I was charged twice for my subscription this month.", "billing"),
    ("荷物が一週間たっても届きません。追跡番号を確認してください。", "shipping"),
    ("I forgot my password and cannot log in.", "account"),
    ("The app crashes every time I open settings.", "technical"),
    ("返金をお願いします。商品が壊れていました。", "refund"),
    ("Where is my parcel? It was due on Monday.", "shipping"),
    ("My invoice shows the wrong amount.", "billing"),
    ("アプリがエラーで起動しません。", "technical"),
]
REPLY = "ご連絡ありがとうございます。担当チームが本日中に確認してご連絡します。"
FIXED_REPLY = "パスワードの再設定リンクをお送りしました。ご確認ください。"


@pytest.fixture
def store_path(tmp_path):
    """Eight triage traces (t0..t7) plus one of another pipeline and one that failed. Reviewed:
    t0 classify corrected (shipping -> billing); t1 both nodes labelled passing; t2 classify
    labelled failing; t3 reply corrected; t4 classify failed its rule check, nobody reviewed it."""
    path = tmp_path / "s.duckdb"
    traces = [triage_trace(f"t{i}", message, "shipping" if i == 0 else label, REPLY, at=DAY1 if i < 4 else DAY2)
              for i, (message, label) in enumerate(MESSAGES)]
    traces.append(triage_trace("other", "SELECT?", "billing", REPLY, pipeline="sql"))
    traces.append(triage_trace("failed", "x", None, None, error="LMError: timeout", error_kind="lm"))
    verdicts = {"t4": {"classify": Verdict(0.0, False, "wrong label")}}
    with Store.open(path) as store:
        store.append_traces(traces, verdicts)
        store.add_correction("t0", {"category": "billing"}, node="classify", reviewer="ann", comment="請求の件")
        store.add_label("t1", node="classify", passed=True, reviewer="ann")
        store.add_label("t1", node="reply", passed=True, reviewer="ann")
        store.add_label("t2", node="classify", passed=False, reviewer="ann")
        store.add_correction("t3", {"reply": FIXED_REPLY}, node="reply", reviewer="ben")
    return path


def exported(path, **filters):
    with Store.open(path, read_only=True) as store:
        return {r["trace_id"]: r for r in export_rows(store, StoreFilter(**filters), pipeline=Triage())}


def test_every_trace_that_did_not_fail_exports_with_corrections_applied(store_path):
    rows = exported(store_path, pipeline="triage")
    # t2: a human said its label is wrong; t4: it failed its rule check; "other" and "failed": not triage's.
    assert sorted(rows) == ["t0", "t1", "t3", "t5", "t6", "t7"]
    assert rows["t0"] == {"message": MESSAGES[0][0], "category": "billing", "reply": REPLY, "trace_id": "t0"}
    assert rows["t3"]["reply"] == FIXED_REPLY
    assert rows["t7"]["message"] == "アプリがエラーで起動しません。"


def test_approved_means_every_gold_node_approved_or_corrected(store_path):
    assert sorted(exported(store_path, approved=True)) == ["t1"]
    assert sorted(exported(store_path, approved=True, node="classify")) == ["t0", "t1"]
    assert sorted(exported(store_path, approved=True, node="reply")) == ["t1", "t3"]
    # t0's reply was never reviewed: it carries what the node produced.
    assert exported(store_path, approved=True, node="classify")["t0"]["reply"] == REPLY


def test_without_a_pipeline_each_traces_recorded_pipeline_names_the_fields(store_path):
    with Store.open(store_path, read_only=True) as store:
        rows = {r["trace_id"]: r for r in export_rows(store)}
    # "other" claims to be of the sql pipeline, whose gold nodes it never called: no complete row.
    assert set(rows) == {"t0", "t1", "t3", "t5", "t6", "t7"}
    assert rows["t1"] == {"message": MESSAGES[1][0], "category": "shipping", "reply": REPLY, "trace_id": "t1"}


def test_store_specs_parse_and_bad_ones_say_how_to_write_them():
    spec = parse_store_spec("store:approved,node=classify,pipeline=triage")
    assert spec.as_dict() == {"approved": True, "node": "classify", "pipeline": "triage"}
    assert parse_store_spec("store:").as_dict() == {"approved": False, "node": None, "pipeline": None}
    with pytest.raises(DatasetError, match=r"unknown store filter 'aproved'.*store:approved,node=classify"):
        parse_store_spec("store:aproved")


def test_pipec_export_writes_jsonl_that_the_dataset_loader_accepts(store_path, tmp_path):
    result = CliRunner().invoke(cli, ["export", "--store", str(store_path), "--pipeline", "triage"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 6 and "I forgot my password" not in result.stdout  # t2 (a failing label) is out
    assert "荷物が一週間たっても届きません" in result.stdout  # UTF-8 text, not \\u escapes
    out = tmp_path / "trainset.jsonl"
    out.write_text(result.stdout, encoding="utf-8")
    dataset = load_dataset(out, Triage())
    assert len(dataset) == 6 and dataset.examples[0].category == "billing"
    assert json.loads(lines[0])["trace_id"] == "t0"


def test_pipec_export_approved_node_and_an_empty_result(store_path):
    runner = CliRunner()
    result = runner.invoke(cli, ["export", "--store", str(store_path), "--approved", "--node", "reply"])
    assert [json.loads(line)["trace_id"] for line in result.stdout.splitlines()] == ["t1", "t3"]
    result = runner.invoke(cli, ["export", "--store", str(store_path), "--pipeline", "nope-not-recorded"])
    assert result.exit_code == 2  # an unknown pipeline spec is a user error naming it
    result = runner.invoke(cli, ["export", "--store", str(store_path), "--approved", "--node", "summary"])
    assert result.exit_code == 0 and result.stdout == ""


def test_export_output_compiles_with_pipec_compile_trainset(store_path, tmp_path):
    result = CliRunner().invoke(cli, ["export", "--store", str(store_path), "--pipeline", "triage"],
                                catch_exceptions=False)
    trainset = tmp_path / "trainset.jsonl"
    trainset.write_text(result.stdout, encoding="utf-8")
    lm, engine = fake_lm(triage_respond)
    compiled = compile_pipeline(CompileOptions("triage", "bootstrap", trainset=str(trainset), lm=lm, seed=1,
                                               progress=False, out=str(tmp_path / "p.json")))
    run = MlflowClient().get_run(compiled["run_id"])
    assert run.info.status == "FINISHED" and run.data.params["trainset.file_size"] == "6"
    assert compiled["trainset"]["size"] + compiled["valset"]["size"] == 6 and engine.requests


def test_compile_reads_store_rows_and_records_which_and_the_store_state(store_path, tmp_path):
    lm, _ = fake_lm(triage_respond)
    compiled = compile_pipeline(CompileOptions("triage", "bootstrap", trainset="store:approved,node=classify",
                                               store=str(store_path), lm=lm, seed=1, progress=False,
                                               out=str(tmp_path / "p.json")))
    params = MlflowClient().get_run(compiled["run_id"]).data.params
    assert params["trainset.path"] == f"{store_path}#store:approved,node=classify"
    assert params["trainset.store.rows"] == "2"
    assert params["trainset.store.trace_ids_sha256"] == trace_ids_digest(["t0", "t1"])
    assert params["trainset.store.filter.pipeline"] == "triage" and params["trainset.store.filter.approved"] == "true"
    assert params["trainset.store.state.schema_version"] == str(SCHEMA_VERSION)
    assert params["trainset.store.state.traces"] == "10" and params["trainset.store.state.corrections"] == "2"


def test_a_store_trainset_with_no_rows_says_what_was_recorded(store_path):
    with pytest.raises(DatasetError, match=r"holds no training rows for store:pipeline=sqlx .*'sql', 'triage'"):
        load_dataset("store:pipeline=sqlx", Triage(), store=store_path)
