"""Query-aware prompts on the scripted LM: rollouts gather (query, instruction, reward) examples
with the judge's textual reward, later queries are written with the best of them in context, the
compiled node makes two LM calls per query, and it saves and loads."""

import dspy

from metrics import PipelineMetric
from optimizers import QueryAware
from programs.builtin import Triage
from tests.optimizers.scripted import prompt_text, requests_for, run, scripted_lm, triage_split


def test_rollouts_rewards_in_context_and_two_calls_per_query(tmp_path):
    train, val = triage_split()
    lm, engine, _ = scripted_lm({"instruction": lambda inputs: f"GOOD: for this query ({inputs['query'][:20]})"})
    optimizer = QueryAware(PipelineMetric(Triage()), queries=3, rounds=2, k=2, max_lm_calls=400, val_size=0,
                           nodes="classify")
    program = run(optimizer, lm, train, val[:5])
    writer_prompts = [prompt_text(r) for r in requests_for(engine, "instruction")]
    assert "(none yet)" in writer_prompts[0]
    # Round 2 writes with round 1's examples in context, rewards with the judge's comment.
    assert any("JUDGE-COMMENT" in p and "Reward: score" in p for p in writer_prompts[3:])
    qp = program.classify.query_prompt
    assert qp is not None and len(qp.examples) == 6
    assert all(e["instruction"].startswith("GOOD: for this query") for e in qp.examples)
    assert "2 on the query-aware node" in optimizer.chosen["inference_lm_calls_per_query"]

    with dspy.context(lm=lm.lm, adapter=lm.adapter):
        before = len(engine.requests)
        program(message=val[0].message)
        assert len(engine.requests) - before == 3  # writer + classify, then reply
        path = tmp_path / "program.json"
        program.save(str(path))
        loaded = Triage()
        loaded.load(str(path))
        assert loaded.classify.query_prompt.examples == qp.examples
        before = len(engine.requests)
        loaded(message=val[0].message)
        assert len(engine.requests) - before == 3
    assert loaded.reply.query_prompt is None
