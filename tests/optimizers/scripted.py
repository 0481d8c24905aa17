"""A scripted LM for the textual-feedback optimizers' tests.

The task answers depend on the node's instruction: a classify instruction that contains
``GOOD`` gets every message right (from the dataset's gold labels), one that contains ``BAD``
answers ``technical`` to everything, any other gets the keyword classifier of ``tests.fakes``
(right on some messages, wrong on others). Prompt-writer
and judge calls are answered by output field, and every request is kept for assertions.
"""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Callable
from typing import Any

import dspy

from experiments.datasets import load_dataset, split_dataset
from experiments.lm import LMConfig
from programs.builtin import Triage, builtin_dataset
from tests.fakes import ScriptedEngine, triage_respond


def text(message: Any) -> str:
    value = message.text() if callable(message.text) else message.text
    return value or ""


def system_text(request: Any) -> str:
    """The request's system prompt (where DSPy puts the instructions)."""
    system = request.system
    if system is None:
        return ""
    return system if isinstance(system, str) else "".join(getattr(p, "text", "") or "" for p in system)


def prompt_text(request: Any) -> str:
    """The system prompt and every message of a request, joined."""
    return "\n".join([system_text(request), *(text(m) for m in request.messages)])


def triage_split() -> tuple[list[dspy.Example], list[dspy.Example]]:
    """The triage split, each part shuffled (seeded) so any prefix mixes the categories."""
    examples = load_dataset(str(builtin_dataset("triage")), Triage()).examples
    train, val = split_dataset(examples, seed=0)
    random.Random(7).shuffle(train)
    random.Random(7).shuffle(val)
    return train, val


class Script:
    """Answers a request by its output fields; ``writer`` maps a prompt-writer output field to a
    function of the request's inputs (or a fixed string)."""

    def __init__(self, gold: dict[str, str], writer: dict[str, Any] | None = None) -> None:
        self.gold = gold
        self.writer = dict(writer or {})
        self.engine: ScriptedEngine | None = None
        self.counter = itertools.count(1)

    def __call__(self, fields: tuple[str, ...], inputs: dict[str, str]) -> dict[str, Any]:
        request = self.engine.requests[-1]
        system = system_text(request)
        if "category" in fields or "reply" in fields:
            answer = triage_respond(fields, inputs)
            if "category" in fields and "GOOD" in system and inputs.get("message") in self.gold:
                answer["category"] = self.gold[inputs["message"]]
            elif "category" in fields and "BAD" in system:
                answer["category"] = "technical"
            return answer
        if "judgement" in fields:
            return {"judgement": {"score": 0.3, "comment": "JUDGE-COMMENT: name the refund team when money is owed"}}
        answer = {}
        for name in fields:
            make = self.writer.get(name, f"{name} number {next(self.counter)} for the step")
            answer[name] = make(inputs) if callable(make) else make
        return answer


def scripted_lm(writer: dict[str, Any] | None = None, *, examples: list[dspy.Example] | None = None
                ) -> tuple[LMConfig, ScriptedEngine, Script]:
    examples = examples if examples is not None else [e for part in triage_split() for e in part]
    script = Script({e.message: e.category for e in examples}, writer)
    engine = ScriptedEngine(script)
    script.engine = engine
    lm = dspy.LM("fake/scripted", engine=engine, cache=False, temperature=0.0)
    return LMConfig(lm, dspy.JSONAdapter(), {"model": "fake/scripted"}, None), engine, script


def requests_for(engine: ScriptedEngine, output_field: str) -> list[Any]:
    """The requests whose response schema asks for ``output_field``."""
    found = []
    for request in engine.requests:
        schema = (request.config.response_format or {}).get("schema", {})
        if output_field in schema.get("properties", {}):
            found.append(request)
    return found


def run(optimizer: Any, lm: LMConfig, train: list[dspy.Example], val: list[dspy.Example],
        student: Any = None) -> Any:
    student = student or Triage()
    with dspy.context(lm=lm.lm, adapter=lm.adapter):
        return optimizer.compile(student, trainset=train, valset=val)


def task_calls(engine: ScriptedEngine) -> int:
    return len(requests_for(engine, "category")) + len(requests_for(engine, "reply"))


def dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


Writer = Callable[[dict[str, str]], str]
