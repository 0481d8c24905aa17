"""`human` with ``notes=store:``: the notes are what people wrote in `pipec review`, read from a real
DuckDB flywheel store (written through the store's own API and the review page's save_review)."""

from datetime import UTC, datetime, timedelta

import pytest

from experiments.review import ReviewInput, save_review
from experiments.runner import Trace
from experiments.store import Store
from metrics import PipelineMetric
from optimizers import HumanFeedback, prepare_optimizer
from optimizers.human import StoreNotes, parse_store_notes, store_notes
from programs import ConfigError
from programs.builtin import Triage
from programs.trace import NodeCall
from tests.optimizers.scripted import prompt_text, requests_for, run, scripted_lm, triage_split

T0 = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)


def _trace(trace_id: str, message: str, category: str, reply: str, *, pipeline: str = "triage", hour: int = 0):
    calls = [NodeCall(node="classify", kind="classifier", position=0, inputs={"message": message},
                      outputs={"category": category}, output_field="category"),
             NodeCall(node="reply", kind="writer", position=1, inputs={"message": message, "category": category},
                      outputs={"reply": reply}, output_field="reply")]
    return Trace(trace_id=trace_id, pipeline=pipeline, program_version="v1", inputs={"message": message},
                 prediction={"category": category, "reply": reply}, calls=calls,
                 started_at=T0 + timedelta(hours=hour))


def _at(hours: float) -> datetime:
    return T0 + timedelta(hours=hours)


@pytest.fixture
def store_path(tmp_path):
    """Four triage traces and one of another pipeline, reviewed as `pipec review` saves reviews."""
    path = tmp_path / "store.duckdb"
    with Store.open(path) as store:
        store.append_traces([
            _trace("t1", "I want my money back for order 7", "billing", "ok", hour=1),
            _trace("t2", "返金はいつになりますか", "refund", "はい", hour=2),
            _trace("t3", "My parcel never came", "shipping", "Sorry.", hour=3),
            _trace("t4", "How do I reset my password?", "account", "Use the reset link.", hour=4),
            _trace("o1", "something else", "technical", "fine", pipeline="other", hour=5),
        ], source="run")
        # The review page: a failed classify call with a comment and its corrected category.
        save_review(store, ReviewInput.from_json({
            "trace_id": "t1", "call_id": "t1/0", "reviewer": "alice", "passed": False,
            "comment": "CLS-NOTE: asking for money back is a refund, not billing",
            "corrections": {"t1/0": "refund"}}))
        # Replies: older and newer failing comments (Japanese), one taken back, one on a passing label.
        store.add_label("t2", call_id="t2/1", passed=False, reviewer="bob", score=1,
                        comment="REPLY-OLD: 返信は\n敬語で書いてください", created_at=_at(10))
        store.add_label("t3", call_id="t3/1", passed=False, reviewer="alice",
                        comment="REPLY-NEW: say when the parcel will arrive", created_at=_at(11))
        store.add_label("t4", call_id="t4/1", passed=False, reviewer="bob", comment="STALE-NOTE", created_at=_at(9))
        store.add_label("t4", call_id="t4/1", passed=True, reviewer="bob", created_at=_at(12))
        store.add_label("t4", call_id="t4/1", passed=True, reviewer="carol", comment="PASSED-NOTE: fine",
                        created_at=_at(12))
        store.add_label("o1", call_id="o1/1", passed=False, reviewer="dave", comment="OTHER-PIPELINE-NOTE",
                        created_at=_at(13))
    return path


@pytest.fixture(scope="module")
def split():
    train, val = triage_split()
    return train, val[:6]


def _writer(inputs):
    if "'classify'" in inputs.get("task", ""):
        return "GOOD: a request for money back is refund; classify the message."
    return "Reply politely in the customer's language and say what happens next."


def test_the_rewrite_prompts_hold_the_stores_comments_and_corrections(split, store_path):
    train, val = split
    lm, engine, _ = scripted_lm({"new_instruction": _writer})
    optimizer = HumanFeedback(PipelineMetric(Triage()), notes="store:", store=str(store_path), accept="all",
                              max_lm_calls=100, val_size=0)
    program = run(optimizer, lm, train, val)
    prompts = {("classify" if "'classify'" in prompt_text(r) else "reply"): prompt_text(r)
               for r in requests_for(engine, "new_instruction")}
    assert set(prompts) == {"classify", "reply"}
    classify, reply = prompts["classify"], prompts["reply"]
    assert "CLS-NOTE: asking for money back is a refund, not billing" in classify
    assert 'a reviewer corrected category from "billing" to "refund"' in classify
    assert "I want my money back for order 7" in classify and "REPLY-" not in classify
    # Newest first; the Japanese comment survives (its line break folded); no taken-back or passing notes.
    newer, older = "REPLY-NEW: say when the parcel will arrive", "REPLY-OLD: 返信は 敬語で書いてください"
    assert reply.index(newer) < reply.index(older)
    assert "(score 1/5)" in reply and "返金はいつになりますか" in reply
    for absent in ("STALE-NOTE", "PASSED-NOTE", "CLS-NOTE"):
        assert absent not in reply
    assert "OTHER-PIPELINE-NOTE" in reply  # no pipeline filter asked for
    assert "GOOD" in program.classify.signature.instructions  # accept=all kept the better rewrite
    logged = {entry["node"]: entry for entry in optimizer.rounds_log}
    assert logged["classify"]["accepted"] and logged["classify"]["kept"]
    assert optimizer.chosen["notes_source"] == f"store:limit=20 ({store_path})"
    assert optimizer.chosen["notes_read"] == {"classify": 2, "reply": 3}


def test_limit_pipeline_and_reviewer_options(store_path):
    with Store.open(store_path, read_only=True) as store:
        assert store_notes(store, ["reply"], parse_store_notes("store:limit=1"))["reply"][0].startswith(
            "OTHER-PIPELINE-NOTE")
        assert len(store_notes(store, ["reply"], parse_store_notes("store:limit=1"))["reply"]) == 1
        triage = store_notes(store, ["reply", "classify"], parse_store_notes("store:pipeline=triage"))
        assert [n.split(":")[0] for n in triage["reply"]] == ["REPLY-NEW", "REPLY-OLD"]
        assert len(triage["classify"]) == 2
        assert store_notes(store, ["reply"], StoreNotes(reviewer="bob")) == {
            "reply": ["REPLY-OLD: 返信は 敬語で書いてください (score 1/5) (on the input "
                      '{"message": "返金はいつになりますか", "category": "refund"})']}
        assert store_notes(store, ["classify"], StoreNotes(reviewer="bob")) == {}


def test_only_the_nodes_being_rewritten_are_read(split, store_path):
    train, val = split
    lm, engine, _ = scripted_lm({"new_instruction": _writer})
    optimizer = HumanFeedback(PipelineMetric(Triage()), notes="store:pipeline=triage", store=str(store_path),
                              accept="none", max_lm_calls=100, val_size=0, nodes="reply")
    run(optimizer, lm, train, val)
    prompts = [prompt_text(r) for r in requests_for(engine, "new_instruction")]
    assert len(prompts) == 1 and "REPLY-NEW" in prompts[0] and "CLS-NOTE" not in prompts[0]
    assert "OTHER-PIPELINE-NOTE" not in prompts[0]
    assert optimizer.rounds_log[0]["accepted"] is False  # accept=none: the diff is recorded, not kept


def test_the_store_path_comes_from_compile_then_the_environment(store_path, tmp_path, monkeypatch):
    metric = PipelineMetric(Triage())
    prepared = prepare_optimizer("human", metric, {"notes": "store:", "accept": "all"}, store=str(store_path))
    assert prepared.teleprompter.store_path == store_path
    assert prepared.settings["init.store"] == str(store_path)
    given = prepare_optimizer("human", metric, {"notes": "store:", "accept": "all", "store": str(store_path)},
                              store=str(tmp_path / "elsewhere.duckdb"))
    assert given.teleprompter.store_path == store_path  # --param store=PATH comes first
    monkeypatch.setenv("PIPEC_STORE", str(store_path))
    assert prepare_optimizer("human", metric, {"notes": "store:", "accept": "all"}).teleprompter.store_path == \
        store_path
    monkeypatch.delenv("PIPEC_STORE")
    monkeypatch.setenv("PIPEC_HOME", str(tmp_path / "home"))  # no store there
    missing = r"--param notes=store:: no store at .*home/store\.duckdb; pass --param store=PATH"
    with pytest.raises(ConfigError, match=missing):
        prepare_optimizer("human", metric, {"notes": "store:", "accept": "all"})


def test_bad_store_notes_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown or malformed option 'limit=0'"):
        parse_store_notes("store:limit=0")
    with pytest.raises(ConfigError, match="unknown or malformed option 'nodes=reply'"):
        HumanFeedback(notes="store:nodes=reply", store=str(tmp_path / "s.duckdb"), accept="all")
    empty = tmp_path / "empty.duckdb"
    with Store.open(empty) as store:
        store.append_traces([_trace("t1", "hello", "account", "hi")], source="run")
        store.add_label("t1", call_id="t1/1", passed=True, reviewer="alice", comment="all good")
    with pytest.raises(ConfigError, match="holds no review comments or corrections yet"):
        HumanFeedback(notes="store:", store=str(empty), accept="all")
    assert parse_store_notes("store:") == StoreNotes()


def test_pipec_compile_takes_the_notes_from_the_store(store_path, monkeypatch):
    """The whole compile (real MLflow) with the store from $PIPEC_STORE: the rewrite read the
    store's comments, the accepted rewrite beat the baseline, and the run records where the notes
    came from and each round."""
    from mlflow.tracking import MlflowClient

    from experiments.compile import CompileOptions, compile_pipeline

    monkeypatch.setenv("PIPEC_STORE", str(store_path))
    lm, engine, _ = scripted_lm({"new_instruction": _writer})
    result = compile_pipeline(CompileOptions("triage", "human", lm=lm, progress=False, params=(
        "notes=store:pipeline=triage", "accept=all", "nodes=classify", "val_size=0", "max_lm_calls=100")))
    prompts = [prompt_text(r) for r in requests_for(engine, "new_instruction")]
    assert len(prompts) == 1 and "CLS-NOTE: asking for money back is a refund" in prompts[0]
    assert result["compile"]["lm_calls"] <= 100
    assert result["compiled"]["nodes"]["classify"] > result["baseline"]["nodes"]["classify"]
    params = MlflowClient().get_run(result["run_id"]).data.params
    assert params["optimizer.chosen.notes_source"] == f"store:limit=20,pipeline=triage ({store_path})"
    assert "CLS-NOTE" in params["optimizer.chosen.rounds"]
