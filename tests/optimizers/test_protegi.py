"""ProTeGi on the scripted LM: the gradient prompt holds the failing examples, the edit prompt holds
the gradient, edits are paraphrased, and a bandit on minibatches chooses the beam."""

import pytest

from metrics import PipelineMetric
from optimizers import ProTeGi
from programs import ConfigError
from programs.builtin import Triage
from tests.fakes import triage_respond
from tests.optimizers.scripted import prompt_text, requests_for, run, scripted_lm, triage_split

REASONS = "GRADIENT-7: the instruction never says that money owed back means the refund team"


@pytest.fixture(scope="module")
def split():
    train, val = triage_split()
    return train, val[:6]


@pytest.mark.parametrize("bandit", ["ucb", "sr"])
def test_gradient_edit_paraphrase_and_bandit(split, bandit):
    train, val = split
    lm, engine, _ = scripted_lm({"reasons": REASONS,
                                      "improved_instruction": "GOOD: decide which team must act on the message.",
                                      "paraphrase": "Paraphrase: pick the team that has to act."})
    optimizer = ProTeGi(PipelineMetric(Triage()), steps=1, beam_width=1, minibatch_size=6, pulls=4, pull_size=10,
                        bandit=bandit, max_lm_calls=400, val_size=0, seed=1, nodes="classify")
    program = run(optimizer, lm, train, val)

    gradients = requests_for(engine, "reasons")
    assert gradients
    first = prompt_text(gradients[0])
    # The failing examples: inputs, the wrong output and the gold one.
    assert "Expected:" in first and "Output:" in first and "message:" in first
    edits = requests_for(engine, "improved_instruction")
    assert edits and all(REASONS in prompt_text(r) for r in edits)
    paraphrases = requests_for(engine, "paraphrase")
    assert paraphrases and "GOOD: decide which team must act" in prompt_text(paraphrases[0])

    pulled = [c for c in optimizer.history if c.pulls]
    assert len(pulled) >= 2  # the bandit tried the successors against each other
    assert "GOOD" in program.classify.signature.instructions
    assert optimizer.best.score > optimizer.history[0].score
    assert optimizer.gradient_log[0]["reasons"] == REASONS


def test_gradient_shows_the_failing_examples_it_was_given(split):
    train, val = split
    lm, engine, _ = scripted_lm({"reasons": REASONS})
    optimizer = ProTeGi(PipelineMetric(Triage()), steps=1, minibatch_size=len(train), errors_per_gradient=2,
                        max_lm_calls=400, val_size=0, nodes="classify")
    run(optimizer, lm, train, val)
    text = prompt_text(requests_for(engine, "reasons")[0])
    shown = [e for e in train if e.message in text]
    assert len(shown) == 2  # errors_per_gradient of the failures
    for example in shown:  # each one the keyword classifier got wrong, with its gold label
        assert triage_respond(("category",), {"message": example.message})["category"] != example.category
        assert f"Expected: {example.category}" in text


def test_bad_settings():
    with pytest.raises(ConfigError, match="bandit='thompson'"):
        ProTeGi(bandit="thompson")
    with pytest.raises(ConfigError, match="beam_width=0"):
        ProTeGi(beam_width=0)
