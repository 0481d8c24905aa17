"""pipec's caching adapters produce exactly DSPy's messages and requests."""

from __future__ import annotations

import json
from typing import Any, Literal

import dspy
import pytest
from dspy.adapters.chat_adapter import FieldInfoWithName

from programs.adapters import ChatAdapter, JSONAdapter
from tests.fakes import ScriptedEngine


class Classify(dspy.Signature):
    """Classify the message. 日本語の指示も そのまま."""

    message: str = dspy.InputField(desc="a customer's message")
    history: list[str] = dspy.InputField(desc="earlier messages")
    label: Literal["請求", "refund", "shipping"] = dspy.OutputField(desc="one of the labels")


class Write(dspy.Signature):
    """Write a reply."""

    message: str = dspy.InputField()
    facts: dict[str, Any] = dspy.InputField()
    count: int = dspy.InputField()
    reply: str = dspy.OutputField()
    tags: list[str] = dspy.OutputField()


class Open(dspy.Signature):
    """An open-ended mapping as output: JSON mode without a schema."""

    message: str = dspy.InputField()
    slots: dict[str, Any] = dspy.OutputField()


CLASSIFY_DEMOS = [
    {"message": "二重に請求されました", "history": ["こんにちは", "hi"], "label": "請求"},
    {"message": "where is my parcel?", "history": [], "label": "shipping"},
    {"message": "money back please", "history": ["x"]},  # incomplete: no output
    {"message": "refund?", "label": "refund"},  # incomplete: an input missing
]
WRITE_DEMOS = [
    {"message": "hi", "facts": {"order": 12, "ja": "注文"}, "count": 3, "reply": "Hello!", "tags": ["greeting"]},
    {"message": "bye", "facts": {}, "count": 0, "reply": "さようなら", "tags": []},
]
CASES = [
    (Classify, CLASSIFY_DEMOS, {"message": "荷物が届きません", "history": ["前回の問い合わせ"]}),
    (Classify, [], {"message": "none", "history": []}),
    (Write, WRITE_DEMOS, {"message": "status?", "facts": {"n": 1.5, "none": None}, "count": 7}),
    (Open, [{"message": "book a table", "slots": {"time": "7pm"}}], {"message": "two people"}),
]


def _lm() -> dspy.LM:
    return dspy.LM("fake/scripted", engine=ScriptedEngine(lambda fields, inputs: {}), cache=False)


@pytest.mark.parametrize(("ours", "theirs"), [(ChatAdapter, dspy.ChatAdapter), (JSONAdapter, dspy.JSONAdapter)])
@pytest.mark.parametrize(("signature", "demos", "inputs"), CASES)
def test_messages_are_dspys(ours: type, theirs: type, signature: type, demos: list, inputs: dict) -> None:
    adapter = ours()
    for _ in range(2):  # the second time from the cache
        assert adapter.format(signature, demos, inputs) == theirs().format(signature, demos, inputs)


@pytest.mark.parametrize(("signature", "demos", "inputs"), CASES)
def test_response_format_is_dspys(signature: type, demos: list, inputs: dict) -> None:
    lm, ours = _lm(), JSONAdapter()
    for _ in range(2):
        mine: dict[str, Any] = {}
        theirs: dict[str, Any] = {}
        ours._prepare_response_format(lm, mine, signature)
        dspy.JSONAdapter()._prepare_response_format(lm, theirs, signature)
        a, b = mine["response_format"], theirs["response_format"]
        if isinstance(b, dict):
            assert a == b == {"type": "json_object"}
        else:
            assert a.model_json_schema() == b.model_json_schema()


def test_a_new_signature_gets_its_own_system_message() -> None:
    """Optimizers change instructions by making a new signature class: never a stale message."""
    adapter = JSONAdapter()
    first = adapter.format_system_message(Classify)
    rewritten = Classify.with_instructions("Pick the label. ラベルを選ぶ。")
    second = adapter.format_system_message(rewritten)
    assert second != first
    assert "ラベルを選ぶ" in second
    assert second == dspy.JSONAdapter().format_system_message(rewritten)
    assert adapter.format_system_message(Classify) == first


def test_a_program_sends_the_same_requests() -> None:
    """Through a real DSPy LM call: the requests the engine receives, and the answers parsed
    (the scripted engine answers in JSON, so this is the JSON adapter's path)."""

    def respond(fields: tuple[str, ...], inputs: dict[str, str]) -> dict[str, Any]:
        return {"label": "請求"}

    def run(adapter: Any) -> tuple[list[Any], list[str]]:
        engine = ScriptedEngine(respond)
        lm = dspy.LM("fake/scripted", engine=engine, cache=False, temperature=0.0)
        predict = dspy.Predict(Classify)
        predict.demos = [dspy.Example(**d) for d in CLASSIFY_DEMOS[:2]]
        with dspy.context(lm=lm, adapter=adapter):
            labels = [predict(message=m, history=["h"]).label for m in ("請求書が二通", "parcel late")]
        return [(r.messages, r.config.response_format) for r in engine.requests], labels

    ours, theirs = run(JSONAdapter()), run(dspy.JSONAdapter())
    assert ours[1] == ["請求", "請求"]
    assert [m for m, _ in ours[0]] == [m for m, _ in theirs[0]]
    assert [f for _, f in ours[0]] == [f for _, f in theirs[0]]


def test_non_string_assistant_values_fall_back_to_dspy() -> None:
    adapter = JSONAdapter()
    values = {FieldInfoWithName(name=n, info=i): v
              for (n, i), v in zip(Write.output_fields.items(), ["Hi 日本", ["a", "b"]], strict=True)}
    text = adapter.format_field_with_value(values, role="assistant")
    assert text == dspy.JSONAdapter().format_field_with_value(values, role="assistant")
    assert json.loads(text) == {"reply": "Hi 日本", "tags": ["a", "b"]}
