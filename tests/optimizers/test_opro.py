"""OPRO on the scripted LM: the meta-prompt holds the past (instruction, score) pairs in ascending
order of score and task exemplars; several instructions are sampled per step."""

import re

from metrics import PipelineMetric
from optimizers import OPRO
from optimizers.opro import meta_prompt_pairs
from programs.builtin import Triage
from tests.optimizers.scripted import requests_for, run, scripted_lm, triage_split


def test_meta_prompt_pairs_are_ascending_and_capped():
    pairs = [("a", 0.5), ("b", 0.9), ("c", 0.1), ("d", 0.7), ("a", 0.6)]
    text = meta_prompt_pairs(pairs, limit=3)
    assert re.findall(r"text:\n(\w)", text) == ["a", "d", "b"]  # the 3 best, worst first; a at its best 60
    assert re.findall(r"score:\n(\d+)", text) == ["60", "70", "90"]


def test_the_meta_prompt_holds_past_pairs_in_ascending_order():
    train, val = triage_split()
    seen = []
    proposals = iter(["GOOD: route by what the customer needs.", "BAD: say technical.", "Pick a team, any team.",
                      "GOOD and careful: route by need.", "BAD again.", "Neutral wording here."])

    def new_instruction(inputs):
        seen.append(inputs["previous_instructions"])
        return next(proposals)

    lm, engine, _ = scripted_lm({"new_instruction": new_instruction})
    optimizer = OPRO(PipelineMetric(Triage()), steps=3, candidates_per_step=2, exemplars=2, max_lm_calls=400,
                     val_size=0, nodes="classify")
    program = run(optimizer, lm, train, val[:6])
    assert len(requests_for(engine, "new_instruction")) == 6  # 3 steps x 2 samples
    first, last = seen[0], seen[-1]
    assert first.count("text:") == 1  # only the original so far
    scores = [int(s) for s in re.findall(r"score:\n(\d+)", last)]
    assert len(scores) == 5 and scores == sorted(scores)  # original + 4 proposals, ascending
    assert "GOOD" in last.split("text:")[-1] and "BAD" in last.split("text:")[1]  # best last, worst first
    exemplars = requests_for(engine, "new_instruction")[0]
    assert any(e.message[:30] in str(exemplars.messages[-1]) for e in train)  # task exemplars from the trainset
    assert "GOOD" in program.classify.signature.instructions
