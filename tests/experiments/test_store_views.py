"""The store's views (SQL inside the DuckDB file) and ``pipec stats``, on a store whose every
figure is known: four traces over two days, verdicts from rules and a judge, human labels."""

import json

import pytest
from click.testing import CliRunner

from experiments.cli import cli
from experiments.store import STATS_VIEWS, Store, store_stats
from metrics.verdict import Verdict
from tests.store_traces import DAY1, DAY2, triage_trace

OK, BAD = Verdict(1.0, True), Verdict(0.0, False, "wrong")


@pytest.fixture
def store_path(tmp_path):
    """a: classify ok, reply fails its rule; b: classify raised (no reply); c: all ok (day 2);
    d: classify fails its rule and reply too (day 2). A judge and a human disagree on a's reply
    and agree on c's."""
    path = tmp_path / "s.duckdb"
    traces = [
        triage_trace("a", "請求が二重です", "billing", "はい", at=DAY1, seconds=(0.1, 1.0)),
        triage_trace("b", "x", None, None, at=DAY1, error="LMError: timeout", error_kind="lm", seconds=(0.2, 0.0)),
        triage_trace("c", "y", "shipping", "We will ship it today.", at=DAY2, seconds=(0.3, 2.0)),
        triage_trace("d", "z", "refund", "No.", at=DAY2, seconds=(0.4, 3.0)),
    ]
    verdicts = {"a": {"classify": OK, "reply": BAD}, "c": {"classify": OK, "reply": OK},
                "d": {"classify": BAD, "reply": BAD}}
    with Store.open(path) as store:
        store.append_traces(traces, verdicts)
        store.add_verdicts([
            {"trace_id": "a", "node": "reply", "validator": "polite", "source": "judge", "passed": False, "score": 0.2,
             "feedback": "curt"},
            {"trace_id": "c", "node": "reply", "validator": "polite", "source": "judge", "passed": True, "score": 0.9},
        ])
        store.add_label("a", node="reply", validator="polite", passed=True, reviewer="ann", comment="十分丁寧")
        store.add_label("c", node="reply", passed=True, reviewer="ann")
    return path


def view(path, name):
    with Store.open(path, read_only=True) as store:
        return store.query(f"SELECT * FROM {name}")


def test_pass_rate_per_node_per_day_and_source(store_path):
    rows = {(r["node"], str(r["day"]), r["source"]): (r["verdicts"], r["passed"], r["pass_rate"])
            for r in view(store_path, "pass_rate_daily")}
    assert rows == {
        ("classify", "2026-03-01", "rule"): (1, 1, 1.0),
        ("reply", "2026-03-01", "rule"): (1, 0, 0.0),
        ("reply", "2026-03-01", "judge"): (1, 0, 0.0),
        ("classify", "2026-03-02", "rule"): (2, 1, 0.5),
        ("reply", "2026-03-02", "rule"): (2, 1, 0.5),
        ("reply", "2026-03-02", "judge"): (1, 1, 1.0),
    }


def test_error_accumulation_counts_the_first_failing_node_of_each_trace(store_path):
    first = {r["trace_id"]: r["node"] for r in view(store_path, "first_failures")}
    assert first == {"a": "reply", "b": "classify", "d": "classify"}  # d: reply failed too, but after classify
    rows = {r["node"]: r for r in view(store_path, "error_accumulation")}
    assert [r["node"] for r in view(store_path, "error_accumulation")] == ["classify", "reply"]  # graph order
    counts = {n: (r["calls"], r["failed_calls"], r["first_failures"]) for n, r in rows.items()}
    assert counts == {"classify": (4, 2, 2), "reply": (3, 2, 1)}
    assert rows["classify"]["share_of_failed_traces"] == pytest.approx(2 / 3)


def test_judge_human_disagreement_pairs_the_same_call_and_validator(store_path):
    [row] = view(store_path, "judge_human_disagreements")
    assert (row["trace_id"], row["node"], row["validator"], row["judge_passed"], row["human_passed"],
            row["reviewer"], row["comment"], row["judge_feedback"]) == \
        ("a", "reply", "polite", False, True, "ann", "十分丁寧", "curt")
    # c's label has no validator: it answers for the whole output, so it pairs with the judge and agrees.
    [agreement] = view(store_path, "judge_human_agreement")
    assert (agreement["node"], agreement["pairs"], agreement["disagreements"], agreement["disagreement_rate"]) == \
        ("reply", 2, 1, 0.5)


def test_latency_and_tokens_per_node(store_path):
    rows = {r["node"]: r for r in view(store_path, "node_latency")}
    assert rows["classify"]["calls"] == 4 and rows["classify"]["errors"] == 1
    assert rows["classify"]["p50_seconds"] == pytest.approx(0.25)  # 0.1 0.2 0.3 0.4
    assert rows["classify"]["p95_seconds"] == pytest.approx(0.385)
    assert rows["reply"]["mean_seconds"] == pytest.approx(2.0)
    assert rows["reply"]["p50_prompt_tokens"] == 100 and rows["reply"]["mean_completion_tokens"] == 10


def test_approved_calls_are_labelled_passing_or_corrected_and_the_correction_wins(store_path):
    with Store.open(store_path) as store:
        store.add_correction("d", {"category": "billing"}, node="classify", reviewer="ben")
        store.add_correction("d", {"category": "account"}, node="classify", reviewer="ben", comment="later one")
        store.add_label("c", node="reply", passed=False, reviewer="cho")  # a second reviewer rejects c's reply
    rows = {r["call_id"]: r for r in view(store_path, "approved_calls")}
    assert set(rows) == {"a/1", "d/0"}
    assert rows["d/0"]["outputs"] == {"category": "account"} and rows["d/0"]["approval"] == "correction"
    assert rows["a/1"]["outputs"] == {"reply": "はい"} and rows["a/1"]["approval"] == "label"


def test_stats_json_is_one_object_with_every_view(store_path):
    result = CliRunner().invoke(cli, ["stats", "--store", str(store_path), "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    found = json.loads(result.stdout)
    assert found["store"]["traces"] == 4 and found["store"]["schema_version"] >= 2
    for name, _, _, _ in STATS_VIEWS:
        assert isinstance(found[name], list) and found[name], name
    with Store.open(store_path, read_only=True) as store:
        assert json.loads(json.dumps(store_stats(store), default=str)) == found


def test_stats_prints_a_table_per_view(store_path, monkeypatch):
    monkeypatch.setenv("PIPEC_STORE", str(store_path))  # the env var is the default for --store
    monkeypatch.setenv("COLUMNS", "250")  # rich's width: no cell folded across lines
    result = CliRunner().invoke(cli, ["stats"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert f"Store {store_path}" in result.output.replace("\n", "")
    for _, title, _, _ in STATS_VIEWS:
        assert title in result.output
    assert "十分丁寧" in result.output


def test_stats_on_a_missing_store_is_one_line_and_exit_2(tmp_path):
    result = CliRunner().invoke(cli, ["stats", "--store", str(tmp_path / "none.duckdb")])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        f"Error: no store at {tmp_path / 'none.duckdb'}: record calls first (pipec run, or evaluate with a store) "
        "or pass --store PATH"]
