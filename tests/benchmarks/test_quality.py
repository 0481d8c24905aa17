"""The quality benchmark on a toy Banking77 file and a scripted LM: rows run a few at a time, the
others kept with their stamp or "not run", and each row's LM-call columns are the compile's counts."""

import csv
import json

import pytest

from benchmarks import quality, run_benchmark
from benchmarks.banking77 import INTENTS6
from benchmarks.harness import intent_answer
from tests.fakes import fake_lm
from tests.optimizers.scripted import prompt_text, system_text

# Per label: messages the keyword classifier gets right, and some it gets wrong (no keyword).
_PHRASES = {
    "card_arrival": "when will my card arrive",
    "exchange_rate": "what exchange rate do you use",
    "lost_or_stolen_card": "someone stole my wallet, card stolen",
    "pin_blocked": "my pin is blocked",
    "top_up_failed": "the top up did not go through",
    "transfer_not_received_by_recipient": "my friend has not got the money I sent",
}


@pytest.fixture
def toy_banking77(tmp_path, monkeypatch):
    """30 messages per intents6 label (120 dev, 36 val, 24 train for the benchmark's split); every
    other one has no keyword, and the keyword classifier labels it card_arrival."""
    folder = tmp_path / "banking77"
    folder.mkdir()
    with (folder / "train.csv").open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "category"])
        for label in INTENTS6:
            for i in range(30):
                writer.writerow([_message(label, i), label])
    monkeypatch.setenv("PIPEC_BANKING77", str(folder))
    return {_message(label, i): label for label in INTENTS6 for i in range(30)}


def _message(label, i):
    return f"{_PHRASES[label]} (message {i})" if i % 2 else f"help desk question {INTENTS6.index(label)}-{i}"


class _LMs:
    """A scripted LM per ``lm(cache)`` call. The task answers with the gold label when the
    instruction says GOOD, else by keyword; every prompt writer proposes a GOOD instruction."""

    def __init__(self, gold):
        self.gold, self.engines = gold, []

    def __call__(self, cache):
        engine_box = []

        def respond(fields, inputs):
            request = engine_box[0].requests[-1]
            if fields == ("label",):
                text = inputs.get("text", "")
                if "GOOD" in system_text(request) and text in self.gold:
                    return {"label": self.gold[text]}
                return {"label": intent_answer(text)}
            if "judgement" in fields:
                return {"judgement": {"score": 0.2, "comment": "name the intent the message asks about"}}
            return {name: "GOOD: answer with the intent the customer's message names." for name in fields}

        config, engine = fake_lm(respond, cache=cache)
        engine_box.append(engine)
        self.engines.append(engine)
        return config


def _row(result, name):
    return next(r for r in result["rows"] if r["optimizer"] == name)


def test_rows_run_now_are_measured_and_earlier_rows_are_kept_with_their_stamp(toy_banking77, tmp_path,
                                                                              monkeypatch):
    monkeypatch.setitem(quality.PARAMS, "ape", ["max_lm_calls=40"])
    lms = _LMs(toy_banking77)
    first = run_benchmark("quality", results_dir=tmp_path, rows=["zero-shot"], lm=lms)
    zero = _row(first, "zero-shot")
    assert zero["status"] == "measured" and zero["measured_at"] and zero["dev"]["lm_calls"] == 120
    assert all(r["status"] == "not run" for r in first["rows"] if r["optimizer"] != "zero-shot")

    checkpoints = []
    second = run_benchmark("quality", results_dir=tmp_path, rows=["ape"], lm=lms,
                           keep=tmp_path / "quality.json", checkpoint=checkpoints.append)
    assert _row(second, "zero-shot") == json.loads(json.dumps(zero))  # kept as measured, stamp and all
    assert second["run_now"] == ["ape"] and len(checkpoints) == 1
    ape = _row(second, "ape")
    assert ape["status"] == "measured" and ape["params"] == ["max_lm_calls=40"]
    # The cap is the one the optimizer was built with, the count the compile's own.
    assert ape["max_lm_calls"] == 40 and 0 < ape["compile_lm_calls"] <= 40 and ape["within_cap"] is True
    engine = lms.engines[-1]  # the ape row's LM: every call it answered is in one of the row's counts
    assert len(engine.requests) == (ape["val"]["baseline_lm_calls"] + ape["compile_lm_calls"]
                                    + ape["val"]["compiled_lm_calls"] + ape["dev"]["lm_calls"])
    # GOOD instructions label every message right: the compile kept one, above the baseline.
    assert ape["val_score_compiled"] == 1.0 > ape["val_score_baseline"] and ape["not_below_baseline"] is True
    assert ape["dev_accuracy"] == 1.0 > zero["dev_accuracy"]
    document = json.loads((tmp_path / "quality.json").read_text(encoding="utf-8"))
    assert [r["optimizer"] for r in document["rows"]][:2] == ["zero-shot", "labeled"]
    table = (tmp_path / "quality.md").read_text(encoding="utf-8")
    assert "| labeled | not run |" in table and f"| ape | {ape['measured_at'][:10]} " in table
    assert "| 40 | " in table


def test_human_reads_the_benchmarks_fixed_notes_and_accepts_every_diff(toy_banking77, tmp_path):
    lms = _LMs(toy_banking77)
    result = quality.run(rows=["human"], lm=lms)
    human = _row(result, "human")
    assert human["max_lm_calls"] == 60 and human["within_cap"] is True
    assert "HUMAN_NOTES" in human["note"] and "accept=all" in " ".join(human["params"])
    assert any("A PIN that no longer works" in prompt_text(r) for r in lms.engines[-1].requests)
    assert human["val_score_compiled"] == 1.0  # the accepted rewrite was kept


def test_within_cap_compares_the_count_with_the_cap_and_the_table_says_when_it_did_not_hold():
    assert quality.within_cap(40, 40) is True and quality.within_cap(41, 40) is False
    assert quality.within_cap(500, None) is None
    row = {"optimizer": "opro", "status": "measured", "measured_at": "2026-11-26T03:00:00Z",
           "git.commit": "abcdef123", "max_lm_calls": 40, "compile_lm_calls": 41, "within_cap": False,
           "val_score_baseline": 0.5, "val_score_compiled": 0.4, "not_below_baseline": False,
           "dev_accuracy": 0.5, "wall_s": 1.0, "note": ""}
    assert "| opro | 2026-11-26 abcdef1 | 40 | 41 | NO | 0.500 | 0.400 | NO |" in quality._table([row])


def test_an_unknown_row_is_refused_before_anything_runs():
    with pytest.raises(ValueError, match="unknown quality row"):
        quality.run(rows=["nope"])


def test_rows_of_a_result_file_written_before_rows_were_stamped_get_the_files_date_and_commit(tmp_path):
    old = {"date": "2026-11-21T13:35:27Z", "machine": {"git.commit": "041f160b", "git.dirty": "false"},
           "settings": {"optimizer_params": {"knn": ["max_lm_calls=150"]}},
           "rows": [{"optimizer": "knn", "dev_accuracy": 0.9, "compile_lm_calls": 150, "val_score_baseline": 0.6,
                     "val_score_compiled": 0.9, "wall_s": 3.0}]}
    path = tmp_path / "quality.json"
    path.write_text(json.dumps(old), encoding="utf-8")
    knn = quality._previous(path)["knn"]
    assert knn["measured_at"] == "2026-11-21T13:35:27Z" and knn["git.commit"] == "041f160b"
    assert knn["max_lm_calls"] == 150 and knn["within_cap"] is True and knn["not_below_baseline"] is True


def test_rows_from_several_result_files_are_put_together_the_later_file_winning(toy_banking77, tmp_path):
    def document(name, rows):
        path = tmp_path / name
        path.write_text(json.dumps({"date": "2026-11-26T02:00:00Z", "machine": {}, "rows": rows}), encoding="utf-8")
        return path

    def row(optimizer, accuracy=None):
        if accuracy is None:
            return {"optimizer": optimizer, "status": "not run"}
        return {"optimizer": optimizer, "status": "measured", "measured_at": "2026-11-26T03:00:00Z",
                "dev_accuracy": accuracy, "compile_lm_calls": 10, "max_lm_calls": 20, "within_cap": True,
                "val_score_baseline": 0.5, "val_score_compiled": 0.5, "not_below_baseline": True, "wall_s": 1.0}

    first = document("a.json", [row("opro", 0.5), row("ape", 0.6), row("human")])
    second = document("b.json", [row("ape", 0.7), row("human", 0.8), row("opro")])
    result = quality.run(rows=[], keep=[first, second], lm=_LMs(toy_banking77))  # runs nothing: no LM call
    assert result["run_now"] == []
    accuracy = {r["optimizer"]: r.get("dev_accuracy") for r in result["rows"] if r["status"] == "measured"}
    assert accuracy == {"opro": 0.5, "ape": 0.7, "human": 0.8}
    assert "| ape | 2026-11-26 ? | 20 | 10 | yes |" in result["table"]
