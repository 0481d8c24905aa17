"""A pipeline file for subprocess tests of ``pipec compile``: a triage classifier whose node calls
go to a scripted LM with a fixed latency, cached by DSPy like any LM.

A subprocess cannot be handed a fake LM object, so the pipeline brings its own: ``forward`` runs
its node under ``dspy.context(lm=...)``. Environment (read at call time):

    SLOW_LM_LATENCY   seconds per call (default 0.05)
    SLOW_LM_LOG       a file that gets one line per call that reached the LM: the request's hash

Use it as ``tests/slow_pipeline.py:SlowTriage`` with the built-in triage dataset.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from typing import Any

import dspy

from programs import Classifier, Pipeline

LABELS = ("billing", "shipping", "account", "technical", "refund")
_KEYWORDS = {"refund": "refund", "money back": "refund", "charge": "billing", "invoice": "billing",
             "deliver": "shipping", "parcel": "shipping", "package": "shipping", "password": "account",
             "log in": "account", "crash": "technical", "error": "technical"}
_FIELD = re.compile(r"\[\[ ## (\w+) ## \]\]\n(.*?)(?=\n\n\[\[ ## |\Z)", re.S)


def _text(parts: Any) -> str:
    return parts if isinstance(parts, str) else "".join(getattr(p, "text", "") or "" for p in parts or ())


class SlowEngine:
    """A DSPy engine answering by keyword after ``SLOW_LM_LATENCY`` seconds."""

    supports_response_schema = True
    supports_function_calling = False
    supports_reasoning = False
    supported_params = frozenset({"temperature", "max_tokens", "response_format"})

    def complete(self, request: Any) -> Any:
        from dspy.lm15 import Message, Response, TextPart, Usage

        time.sleep(float(os.environ.get("SLOW_LM_LATENCY", "0.05")))
        texts = [_text(m.parts) for m in request.messages]
        log = os.environ.get("SLOW_LM_LOG")
        if log:
            digest = hashlib.sha256("\x00".join(texts).encode()).hexdigest()[:16]
            with open(log, "a", encoding="utf-8") as handle:
                handle.write(digest + "\n")
        inputs = dict(_FIELD.findall(texts[-1].split("\n\nRespond with")[0]))
        message = inputs.get("message", "").lower()
        label = next((v for k, v in _KEYWORDS.items() if k in message), "billing")
        return Response(id=None, model="slow/scripted",
                        message=Message.assistant([TextPart(json.dumps({"category": label}))]),
                        finish_reason="stop", usage=Usage(input_tokens=10, output_tokens=5, total_tokens=15))

    def stream(self, request: Any) -> Any:
        from dspy.lm15 import response_to_events

        return response_to_events(self.complete(request))

    def close(self) -> None:
        pass


_LM = dspy.LM("slow/scripted", engine=SlowEngine(), cache=True, temperature=0.0)


class SlowTriage(Pipeline):
    """The triage classifier alone, on the slow scripted LM."""

    inputs = ("message",)
    gold = {"classify": "category"}

    def __init__(self) -> None:
        super().__init__()
        self.classify = Classifier({"message": "a customer support message"}, output="category", labels=LABELS,
                                   instructions="Classify the customer support message.")

    def forward(self, message: str) -> dspy.Prediction:
        with dspy.context(lm=_LM, adapter=dspy.JSONAdapter()):
            return dspy.Prediction(category=self.classify(message=message).category)
