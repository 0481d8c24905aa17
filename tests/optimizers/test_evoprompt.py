"""EvoPrompt on the scripted LM: roulette-selected parents go to one crossover-then-mutation prompt
(GA), or four instructions to the differential-evolution prompt (DE)."""

import itertools
import random

import pytest

from metrics import PipelineMetric
from optimizers import EvoPrompt
from programs import ConfigError
from programs.builtin import Triage
from tests.optimizers.scripted import requests_for, run, scripted_lm, triage_split


@pytest.fixture(scope="module")
def split():
    train, val = triage_split()
    return train, val[:6]


def test_ga_crossover_prompt_holds_two_parents(split):
    train, val = split
    parents = []

    def final(inputs):
        parents.append((inputs["instruction_1"], inputs["instruction_2"]))
        return "GOOD child: route by the team that must act."

    numbers = itertools.count(1)
    lm, engine, _ = scripted_lm({"paraphrase": lambda inputs: f"Variant {next(numbers)} of: {inputs['instruction']}",
                                 "final_instruction": final, "crossover": "crossed"})
    optimizer = EvoPrompt(PipelineMetric(Triage()), population=3, generations=1, max_lm_calls=400, val_size=0,
                          nodes="classify")
    program = run(optimizer, lm, train, val)
    assert len(requests_for(engine, "final_instruction")) == 3
    population = {c.instructions["classify"] for c in optimizer.history if c.origin in ("original", "paraphrase")}
    for first, second in parents:
        assert first in population and second in population and first != second
    assert "GOOD child" in program.classify.signature.instructions
    assert any(c.origin.startswith("crossover+mutation of c") for c in optimizer.history)


def test_de_prompt_holds_the_member_the_best_and_two_others(split):
    train, val = split
    seen = []

    def final(inputs):
        seen.append(inputs)
        return "GOOD: the DE child."

    numbers = itertools.count(1)
    lm, _, _ = scripted_lm({"paraphrase": lambda inputs: f"Variant {next(numbers)} of: {inputs['instruction']}",
                            "final_instruction": final})
    optimizer = EvoPrompt(PipelineMetric(Triage()), variant="de", population=3, generations=1, max_lm_calls=400,
                          val_size=0, nodes="classify")
    program = run(optimizer, lm, train, val)
    assert len(seen) == 3
    assert all({"instruction_1", "instruction_2", "best_instruction", "basic_instruction"} <= set(s) for s in seen)
    assert len({s["basic_instruction"] for s in seen}) == 3  # each member in turn
    assert "GOOD" in program.classify.signature.instructions


def test_roulette_prefers_higher_scores():
    from optimizers.textual import Candidate

    optimizer = EvoPrompt()
    optimizer.rng = random.Random(0)
    good, bad = Candidate("a", {}, score=0.9), Candidate("b", {}, score=0.0)
    picks = [optimizer.roulette([good, bad]).id for _ in range(200)]
    assert picks.count("a") > 190


def test_bad_variant():
    with pytest.raises(ConfigError, match="variant='pso'"):
        EvoPrompt(variant="pso")
