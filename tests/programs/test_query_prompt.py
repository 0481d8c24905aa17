"""A node's query prompt: the writer sees the best past examples, the node answers with its own
instruction plus the written one, and the state round-trips."""

import copy

import dspy

from programs.builtin import Triage
from programs.query_prompt import QueryPrompt, format_query
from tests.fakes import fake_lm


def text(message):
    return message.text() if callable(message.text) else message.text


def test_best_examples_last_and_state_roundtrip():
    qp = QueryPrompt(task="t", k=2, examples=[{"query": q, "instruction": i, "reward": "r", "score": s}
                                              for q, i, s in [("a", "ia", 0.2), ("b", "ib", 0.9), ("c", "ic", 0.5)]])
    assert [e["query"] for e in qp.best()] == ["c", "b"]
    assert "Query:\nb" in qp.past_text() and "Query:\na" not in qp.past_text()
    loaded = QueryPrompt.load(qp.dump())
    assert loaded.dump() == qp.dump() and copy.deepcopy(qp).dump() == qp.dump()
    assert format_query({"message": "返金してください"}) == "message: 返金してください"


def test_the_node_answers_with_the_written_instruction():
    def respond(fields, inputs):
        if "instruction" in fields:
            return {"instruction": "WRITTEN: this one is about a parcel."}
        return {"category": "shipping", "reply": "ok ok ok ok ok"}

    lm, engine = fake_lm(respond)
    program = Triage()
    program.classify.query_prompt = QueryPrompt(task="route messages")
    with dspy.context(lm=lm.lm, adapter=lm.adapter):
        program(message="Where is my parcel?")
    writer, classify = engine.requests[0], engine.requests[1]
    assert "Where is my parcel?" in text(writer.messages[-1])
    system = classify.system if isinstance(classify.system, str) else "".join(p.text for p in classify.system)
    assert "Classify the customer support message" in system and "WRITTEN: this one is about a parcel." in system
    assert program.classify.signature.instructions.endswith("handle it.")  # the node itself is unchanged
    assert program.classify.query_prompt.written[0][1] == "WRITTEN: this one is about a parcel."


def test_a_failing_writer_leaves_the_node_its_own_instruction():
    def respond(fields, inputs):
        if "instruction" in fields:
            return {"nothing": 1}
        return {"category": "shipping", "reply": "ok ok ok ok ok"}

    lm, _ = fake_lm(respond)
    program = Triage()
    program.classify.query_prompt = QueryPrompt(task="route messages")
    with dspy.context(lm=lm.lm, adapter=lm.adapter):
        prediction = program(message="Where is my parcel?")
    assert prediction.category == "shipping"
    assert program.classify.query_prompt.written[0][1] == ""
