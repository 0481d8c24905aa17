"""The restaurants benchmark scores SQL by execution and says how many questions each row counted."""

import json

import pytest

from benchmarks import restaurants
from programs import DatasetError
from tests.fakes import fake_lm


@pytest.fixture
def split():
    try:
        return restaurants.load_split(restaurants.PER_QUERY)
    except DatasetError:
        pytest.skip("the Restaurants dataset is not available on this machine")


def test_a_row_answering_the_gold_sql_scores_one_and_the_counts_come_from_the_database(split, tmp_path,
                                                                                       monkeypatch):
    _, test = split
    gold = {e.question: e.sql for e in test}
    config, engine = fake_lm(lambda fields, inputs: {"sql": gold[inputs["question"]]})
    monkeypatch.setattr("experiments.lm.make_lm", lambda *a, **k: config)
    kept = tmp_path / "restaurants.json"  # an earlier run's row that counted 1 non-empty gold result
    kept.write_text(json.dumps({"rows": [{"row": "knn k=4", "status": "measured", "n": 11, "n_nonempty": 1,
                                          "accuracy_nonempty": 0.5, "accuracy_all": 0.5, "runs": 1.0,
                                          "lm_calls_per_question": 1.0, "prompt_tokens_per_question": 9}]}))
    result = restaurants.run(rows=["zero-shot"], keep=kept)
    row = next(r for r in result["rows"] if r["row"] == "zero-shot")
    assert row["accuracy_nonempty"] == 1.0 and row["accuracy_all"] == 1.0 and row["runs"] == 1.0
    assert row["lm_calls_per_question"] == 1.0 and len(engine.requests) == len(test)
    assert 0 < row["n_nonempty"] < row["n"] == len(test)
    assert result["settings"]["test_nonempty_gold"] == row["n_nonempty"]  # not the kept row's 1
    assert f"| zero-shot | {len(test)} ({row['n_nonempty']}) | 1.000 | 1.000 |" in result["table"]
    assert "| knn k=4 | 11 (1) | 0.500 |" in result["table"]


def test_a_wrong_query_scores_zero(split, monkeypatch):
    config, _ = fake_lm(lambda fields, inputs: {"sql": "SELECT 1"})
    monkeypatch.setattr("experiments.lm.make_lm", lambda *a, **k: config)
    row = next(r for r in restaurants.run(rows=["zero-shot"])["rows"] if r["row"] == "zero-shot")
    assert row["accuracy_nonempty"] == 0.0 and row["accuracy_all"] == 0.0 and row["runs"] == 1.0


def test_the_samples_row_without_grammar_costs_three_calls_and_the_majority_result_wins(split, monkeypatch):
    _, test = split
    gold = {e.question: e.sql for e in test}
    seen: dict[str, int] = {}

    def respond(fields, inputs):  # the first sample is wrong, the other two give the gold query
        seen[inputs["question"]] = seen.get(inputs["question"], 0) + 1
        return {"sql": "SELECT 1" if seen[inputs["question"]] == 1 else gold[inputs["question"]]}

    config, engine = fake_lm(respond)
    monkeypatch.setattr("experiments.lm.make_lm", lambda *a, **k: config)
    name = "knn + schema_linking + samples=3"
    row = next(r for r in restaurants.run(rows=[name])["rows"] if r["row"] == name)
    assert row["settings"] == {"knn": True, "schema_linking": True, "samples": 3}
    assert row["lm_calls_per_question"] == 3.0 and len(engine.requests) == 3 * len(test)
    assert row["accuracy_nonempty"] == 1.0 and row["accuracy_all"] == 1.0
