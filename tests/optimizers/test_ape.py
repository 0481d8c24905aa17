"""APE on the scripted LM: instructions are generated forward from input/output demos, scored on a
subset, and the best are resampled as paraphrases."""

from metrics import PipelineMetric
from optimizers import APE
from programs.builtin import Triage
from tests.optimizers.scripted import prompt_text, requests_for, run, scripted_lm, triage_split


def test_generates_from_demos_then_resamples_the_best():
    train, val = triage_split()
    generated = iter(["GOOD: name the team that must act.", "Say something.", "Another guess at it."])
    lm, engine, _ = scripted_lm({"instruction": lambda inputs: next(generated),
                                 "paraphrase": "GOOD paraphrase: name the acting team."})
    optimizer = APE(PipelineMetric(Triage()), proposals=3, demos_per_proposal=3, top_k=1, paraphrases=2,
                    max_lm_calls=400, val_size=6, nodes="classify")
    program = run(optimizer, lm, train, val[:8])
    generations = requests_for(engine, "instruction")
    assert len(generations) == 3
    text = prompt_text(generations[0])
    shown = [e for e in train if e.message[:40] in text]
    assert len(shown) == 3 and all(f"Output: {e.category}" in text for e in shown)  # input/output demos
    paraphrases = requests_for(engine, "paraphrase")
    assert len(paraphrases) == 2 and "GOOD: name the team that must act." in prompt_text(paraphrases[0])
    origins = [c.origin for c in optimizer.history]
    assert origins.count("forward-generation") == 3 and origins.count("paraphrase") == 2
    assert "GOOD" in program.classify.signature.instructions
