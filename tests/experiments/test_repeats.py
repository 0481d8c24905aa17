"""Repeated evaluations: the cache is bypassed, flips are counted, intervals reported."""

import itertools
import json

import pytest

from experiments.evaluate_run import EvaluateOptions, evaluate_pipeline
from programs.builtin import builtin_dataset
from tests.fakes import fake_lm, triage_respond


def test_evaluate_repeats_resample_and_count_flips(tmp_path):
    lines = builtin_dataset("triage").read_text(encoding="utf-8").splitlines()[:6]
    devset = tmp_path / "dev.jsonl"
    devset.write_text("\n".join(lines) + "\n", encoding="utf-8")
    shaky_message = json.loads(lines[0])["message"]
    turns = itertools.count()

    def shaky(fields, inputs):
        """Right on the first message every other time it is asked; steady elsewhere."""
        answer = triage_respond(fields, inputs)
        if "category" in fields and inputs.get("message") == shaky_message:
            answer["category"] = "billing" if next(turns) % 2 == 0 else "shipping"
        return answer

    lm, engine = fake_lm(shaky, cache=True)  # a cache that repeats must bypass
    result = evaluate_pipeline(EvaluateOptions("triage", devset=str(devset), lm=lm, repeats=3, progress=False))
    repeats = result["repeats"]
    assert repeats["repeats"] == 3
    assert len(engine.requests) == 3 * 6 * 2  # every repeat asked the LM again: 6 examples, 2 nodes
    assert repeats["resampling"]["cache"] is False and "temperature 0" in repeats["resampling"]["note"]
    flipped = [e for e in repeats["examples"] if e["flips"]]
    assert [e["example"] for e in flipped] == [0] and flipped[0]["flips"] == 2
    assert flipped[0]["nodes"]["classify"] == 2 and flipped[0]["nodes"]["reply"] == 0
    assert flipped[0]["passed"] in ([True, False, True], [False, True, False])
    assert repeats["nodes"]["classify"]["flips"] == 2 and repeats["nodes"]["reply"]["flips"] == 0
    score = repeats["score"]
    assert len(score["repeats"]) == 3 and score["repeats"][0] != score["repeats"][1]
    assert score["low"] <= score["mean"] <= score["high"]
    assert score["mean"] == pytest.approx(sum(score["repeats"]) / 3)


def test_a_deterministic_lm_repeats_itself_and_the_summary_says_so(tmp_path):
    devset = tmp_path / "dev.jsonl"
    devset.write_text("\n".join(builtin_dataset("triage").read_text(encoding="utf-8").splitlines()[:4]) + "\n",
                      encoding="utf-8")
    lm, _ = fake_lm(triage_respond)
    repeats = evaluate_pipeline(EvaluateOptions("triage", devset=str(devset), lm=lm, repeats=2,
                                                progress=False))["repeats"]
    assert repeats["flipped_examples"] == 0
    assert repeats["score"]["repeats"][0] == repeats["score"]["repeats"][1]
    assert "no flips are expected" in repeats["resampling"]["note"]
