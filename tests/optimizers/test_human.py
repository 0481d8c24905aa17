"""The manual loop on the scripted LM: the notes reach the rewrite, the person sees the diff and
decides, and every round is recorded."""

import pytest

from metrics import PipelineMetric
from optimizers import HumanFeedback
from optimizers.human import parse_notes
from programs import ConfigError
from programs.builtin import Triage
from tests.optimizers.scripted import prompt_text, requests_for, run, scripted_lm, triage_split


@pytest.fixture(scope="module")
def split():
    train, val = triage_split()
    return train, val[:6]


def test_notes_from_a_file_reach_the_rewrite_and_the_diff_is_shown(split, tmp_path):
    train, val = split
    notes = tmp_path / "notes.txt"
    notes.write_text("classify: 返金の依頼は refund チームへ (NOTE-42)\n# a comment line\n", encoding="utf-8")
    lm, engine, _ = scripted_lm({"new_instruction": "GOOD: send money-back requests to refund."})
    shown = []
    optimizer = HumanFeedback(PipelineMetric(Triage()), notes=str(notes), decide=lambda d: shown.append(d) or True,
                              max_lm_calls=100, val_size=0)
    program = run(optimizer, lm, train, val)
    rewrite = prompt_text(requests_for(engine, "new_instruction")[0])
    assert "返金の依頼は refund チームへ (NOTE-42)" in rewrite and "a comment line" not in rewrite
    assert len(shown) == 1 and "+GOOD: send money-back requests to refund." in shown[0]
    entry = optimizer.rounds_log[0]
    assert entry["node"] == "classify" and entry["accepted"] and entry["kept"] and entry["score"] is not None
    assert "GOOD" in program.classify.signature.instructions


@pytest.mark.parametrize("accept", ["none", "all"])
def test_accept_all_or_none(split, tmp_path, accept):
    train, val = split
    notes = tmp_path / "notes.txt"
    notes.write_text("Route money-back requests to refund.\n", encoding="utf-8")
    lm, _, _ = scripted_lm({"new_instruction": "GOOD: route money-back requests to refund."})
    optimizer = HumanFeedback(PipelineMetric(Triage()), notes=str(notes), accept=accept, max_lm_calls=100,
                              val_size=0, nodes="classify")
    program = run(optimizer, lm, train, val)
    assert optimizer.rounds_log[0]["accepted"] is (accept == "all")
    assert ("GOOD" in program.classify.signature.instructions) is (accept == "all")
    assert optimizer.chosen["rounds"][0]["diff"].startswith("--- classify (current)")


def test_store_reviews_are_notes(split):
    train, val = split
    lm, engine, _ = scripted_lm({"new_instruction": "GOOD: as the reviewer asked."})
    rows = [{"node": "reply", "comment": "REVIEW-9: too long", "passed": False},
            {"node": "reply", "comment": "fine", "passed": True}]
    optimizer = HumanFeedback(PipelineMetric(Triage()), reviews=lambda: rows, accept="all", max_lm_calls=100,
                              val_size=0)
    run(optimizer, lm, train, val)
    prompts = [prompt_text(r) for r in requests_for(engine, "new_instruction")]
    assert len(prompts) == 1 and "REVIEW-9: too long" in prompts[0] and "- fine" not in prompts[0]
    assert optimizer.rounds_log[0]["node"] == "reply"


def test_parse_notes():
    assert parse_notes("classify: a\nreply: b\nc\nother: d", ["classify", "reply"]) == {
        "classify": ["a"], "reply": ["b"], None: ["c", "other: d"]}


def test_needs_notes_and_a_way_to_decide(tmp_path):
    with pytest.raises(ConfigError, match="needs notes"):
        HumanFeedback()
    with pytest.raises(ConfigError, match="no such file"):
        HumanFeedback(notes=str(tmp_path / "missing.txt"), accept="all")
    notes = tmp_path / "n.txt"
    notes.write_text("x\n")
    with pytest.raises(ConfigError, match="accept=all or --param accept=none"):
        HumanFeedback(notes=str(notes))  # pytest's stdin is not a terminal
