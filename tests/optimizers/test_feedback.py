"""Judge-feedback rewriting on the scripted LM: the judge's comment reaches the rewriting prompt,
a rewrite is kept only when the valset score improves, and each epoch's score is recorded."""

from metrics import PipelineMetric
from optimizers import FeedbackRewrite
from programs.builtin import Triage
from tests.optimizers.scripted import prompt_text, requests_for, run, scripted_lm, triage_split


def test_the_judges_comment_reaches_the_rewrite():
    train, val = triage_split()
    rewrites = iter(["BAD: always technical.", "GOOD: name the team that must act."] + ["Neutral."] * 10)
    lm, engine, _ = scripted_lm({"new_instruction": lambda inputs: next(rewrites)})
    optimizer = FeedbackRewrite(PipelineMetric(Triage()), epochs=2, minibatch_size=6, batches_per_epoch=2,
                                max_lm_calls=400, val_size=0, nodes="classify")
    program = run(optimizer, lm, train, val[:6])
    judged = requests_for(engine, "judgement")
    assert judged and "reference" in prompt_text(judged[0]).lower()
    rewrite_prompts = requests_for(engine, "new_instruction")
    assert rewrite_prompts and all("JUDGE-COMMENT: name the refund team" in prompt_text(r) for r in rewrite_prompts)
    assert "Expected:" in prompt_text(rewrite_prompts[0]) and "Score:" in prompt_text(rewrite_prompts[0])
    kept = [c for c in optimizer.history if c.origin == "rewrite"]
    assert [c.instructions["classify"][:4] for c in kept][:2] == ["BAD:", "GOOD"]
    assert "GOOD" in program.classify.signature.instructions  # the BAD rewrite was scored and dropped
    assert [e["epoch"] for e in optimizer.epoch_scores] == [1, 2]
    assert optimizer.epoch_scores[0]["best_score"] > optimizer.history[0].score
    assert optimizer.chosen["epoch_scores"] == optimizer.epoch_scores
