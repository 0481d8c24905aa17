"""A scripted, deterministic fake LM for unit tests.

It is a real DSPy engine (the same contract as the embedded LM), so everything above it (the
adapter, the cache, usage tracking, optimizers) runs for real; only the answers are scripted.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from typing import Any

import dspy
from dspy.lm15 import Message, Response, TextPart, Usage

from experiments.lm import LMConfig

_FIELD = re.compile(r"\[\[ ## (\w+) ## \]\]\n(.*?)(?=\n\n\[\[ ## |\Z)", re.S)

Respond = Callable[[tuple[str, ...], dict[str, str]], dict[str, Any]]


def _text(parts: Any) -> str:
    return parts if isinstance(parts, str) else "".join(getattr(p, "text", "") or "" for p in parts or ())


class ScriptedEngine:
    """Answers each request with ``respond(output_fields, inputs)``, serialised as JSON.

    The output fields come from the request's JSON schema; the inputs are parsed from the last
    user message. Every request is kept in ``requests`` for assertions.
    """

    supports_response_schema = True
    supports_function_calling = False
    supports_reasoning = False
    supported_params = frozenset({"temperature", "max_tokens", "response_format"})

    def __init__(self, respond: Respond) -> None:
        self.respond = respond
        self.requests: list[Any] = []
        self.lock = threading.Lock()

    def complete(self, request: Any) -> Response:
        with self.lock:
            self.requests.append(request)
        last = _text(request.messages[-1].parts).split("\n\nRespond with")[0]
        inputs = {name: value.strip() for name, value in _FIELD.findall(last)}
        schema = (request.config.response_format or {}).get("schema", {})
        fields = tuple(schema.get("properties", {}))
        answer = self.respond(fields, inputs)
        return Response(id=None, model="fake/scripted", message=Message.assistant([TextPart(json.dumps(answer))]),
                        finish_reason="stop", usage=Usage(input_tokens=10, output_tokens=5, total_tokens=15))

    def stream(self, request: Any) -> Any:
        from dspy.lm15 import response_to_events

        return response_to_events(self.complete(request))

    def close(self) -> None:
        pass


def fake_lm(respond: Respond, *, cache: bool = False, num_retries: int | None = None
            ) -> tuple[LMConfig, ScriptedEngine]:
    """An LMConfig around a ScriptedEngine, for ``CompileOptions(lm=...)`` or ``dspy.context``."""
    engine = ScriptedEngine(respond)
    retries = {} if num_retries is None else {"num_retries": num_retries}
    lm = dspy.LM("fake/scripted", engine=engine, cache=cache, temperature=0.0, **retries)
    return LMConfig(lm, dspy.JSONAdapter(), {"model": "fake/scripted", "temperature": 0.0}, None), engine


TRIAGE_KEYWORDS = {
    "refund": "refund", "money back": "refund", "charge": "billing", "invoice": "billing",
    "bill": "billing", "deliver": "shipping", "parcel": "shipping", "package": "shipping",
    "password": "account", "log in": "account", "login": "account", "crash": "technical", "error": "technical",
}


def triage_respond(fields: tuple[str, ...], inputs: dict[str, str]) -> dict[str, Any]:
    """A keyword classifier and a fixed polite reply: right on some messages, wrong on others."""
    answer: dict[str, Any] = {}
    if "category" in fields:
        message = inputs.get("message", "").lower()
        answer["category"] = next((label for key, label in TRIAGE_KEYWORDS.items() if key in message), "billing")
    if "reply" in fields:
        team = inputs.get("category", "support")
        answer["reply"] = f"Thank you for writing; our {team} team will sort this out today."
    return answer


def message_text(message: Any) -> str:
    """A request message's text (DSPy's message type has it as a method or a field)."""
    return message.text() if callable(message.text) else message.text
