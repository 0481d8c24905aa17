"""The review queue and saving reviews, over a real store (no browser: see test_review_page.py)."""

from __future__ import annotations

from datetime import date

import pytest

from experiments.review import QueueFilters, ReviewInput, load_item, queue, save_review
from experiments.store import Store
from programs.errors import UserError
from tests.experiments.review_seed import seed_store


@pytest.fixture
def seeded(tmp_path):
    return seed_store(tmp_path / "store.duckdb")


def _ids(path, filters=None):
    filters = filters or QueueFilters()
    with Store.open(path, read_only=True) as store:
        return [(it.trace_id, it.tier) for it in queue(store, filters)]


def test_the_three_disagreements_come_first_then_unreviewed_by_lowest_score_then_newest(seeded):
    found = _ids(seeded.path, QueueFilters(status="all"))
    assert {t for t, tier in found[:3]} == set(seeded.disagreements) and {tier for _, tier in found[:3]} == {1}
    # Among the disagreements: the lowest score first (t03 and t07 failed a rule too), newest first on ties.
    assert [t for t, _ in found[:3]] == ["t07", "t03", "t01"]
    assert found[3:] == [("t09", 2), ("t08", 2), ("t06", 2), ("t04", 2), ("t02", 2), ("t05", 3), ("t00", 3)]
    assert [t for t, _ in _ids(seeded.path)] == [t for t, tier in found if tier < 3]  # open: not the reviewed


def test_a_second_label_settles_a_disagreement_and_a_flip_ends_it(seeded):
    with Store.open(seeded.path) as store:
        # t07: the judge failed it, the seeded human passed it. A second human agrees with the first.
        save_review(store, ReviewInput("t07", "t07/1", "b", passed=True, validator=seeded.judge))
        # t03: a second human flips to the judge's side.
        save_review(store, ReviewInput("t03", "t03/1", "b", passed=False, validator=seeded.judge))
    found = dict(_ids(seeded.path, QueueFilters(status="all")))
    assert found["t07"] == 3 and found["t03"] == 3 and found["t01"] == 1


def test_a_new_judge_verdict_against_the_human_reopens_the_item(seeded):
    with Store.open(seeded.path) as store:
        store.add_verdicts([{"trace_id": "t00", "call_id": "t00/1", "node": "reply", "validator": seeded.judge,
                             "source": "judge", "score": 0.0, "passed": False}])
    assert ("t00", 1) in _ids(seeded.path)[:4]


def test_filters(seeded):
    assert _ids(seeded.path, QueueFilters(status="all", since=date(2026, 11, 21))) == []
    assert len(_ids(seeded.path, QueueFilters(status="all", pipeline="triage", node="classify"))) == 10
    assert _ids(seeded.path, QueueFilters(status="all", pipeline="sql")) == []
    assert _ids(seeded.path, QueueFilters(status="all", validator="no-such-check")) == []
    with pytest.raises(UserError, match="since='yesterday' is not a date"):
        QueueFilters.from_query({"since": "yesterday"})
    with pytest.raises(UserError, match="status"):
        QueueFilters.from_query({"status": "done"})
    assert QueueFilters.from_query({"node": "reply", "since": "2026-11-20"}).as_query() == {
        "node": "reply", "since": "2026-11-20"}


def test_an_item_holds_the_whole_trace_and_points_at_the_disagreement(seeded):
    with Store.open(seeded.path, read_only=True) as store:
        item = load_item(store, "t01")
        assert load_item(store, "nope") is None
    assert [c.node for c in item.calls] == ["classify", "reply"]
    reply = item.calls[1]
    assert reply.output == "ご不便をおかけして申し訳ありません。明日お届けします。"
    assert {v["source"] for v in reply.verdicts} == {"rule", "judge"} and reply.disagreement
    assert item.focus == "t01/1" and item.first_failure == "t01/1"
    assert [lab["reviewer"] for lab in reply.labels] == ["seed"]


def test_saving_a_review_writes_a_label_and_corrections_with_one_time(seeded):
    review = ReviewInput.from_json({"trace_id": "t02", "call_id": "t02/0", "reviewer": " 太郎 ", "passed": None,
                                    "score": 2, "comment": "カテゴリが違う",
                                    "corrections": {"t02/0": "billing", "t02/1": "請求の件で承りました。"}})
    assert review.passed is False and review.reviewer == "太郎"
    with Store.open(seeded.path) as store:
        saved = save_review(store, review)
        label = store.query("SELECT * FROM labels WHERE label_id = ?", [saved["label_id"]])[0]
        corrections = store.query("SELECT * FROM corrections ORDER BY node")
    assert (label["node"], label["passed"], label["score"]) == ("classify", False, 2)
    assert label["comment"] == "カテゴリが違う"
    assert [(c["node"], c["outputs"]) for c in corrections] == [
        ("classify", {"category": "billing"}), ("reply", {"reply": "請求の件で承りました。"})]
    assert {c["created_at"] for c in corrections} == {label["created_at"]}


@pytest.mark.parametrize(("data", "message"), [
    ({"reviewer": "a", "passed": True}, "'trace_id' is empty"),
    ({"trace_id": "t02", "passed": True}, "'reviewer' is empty"),
    ({"trace_id": "t02", "reviewer": "a", "score": 6}, "'score' must be 1..5"),
    ({"trace_id": "t02", "reviewer": "a"}, "needs pass/fail"),
    ({"trace_id": "t02", "reviewer": "a", "corrections": {"t02/1": 3}}, "'corrections'"),
])
def test_bad_reviews_name_the_field(data, message):
    with pytest.raises(UserError, match=message):
        ReviewInput.from_json(data)


def test_a_review_of_a_call_of_another_trace_or_an_empty_correction_writes_nothing(seeded):
    with Store.open(seeded.path) as store:
        with pytest.raises(UserError, match="not part of trace"):
            save_review(store, ReviewInput("t02", "t02/1", "a", passed=True, corrections={"t03/1": "x"}))
        with pytest.raises(UserError, match="empty"):
            save_review(store, ReviewInput("t02", "t02/1", "a", passed=True, corrections={"t02/1": "  "}))
        assert store.query("SELECT count(*) AS n FROM labels")[0]["n"] == 5
        assert store.query("SELECT count(*) AS n FROM corrections")[0]["n"] == 0
