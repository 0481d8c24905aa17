"""Query-aware prompting: a prompt writer composes an instruction for each query.

A node with a ``QueryPrompt`` (set by ``--optimizer query-aware``) makes **two LM calls per
query**: first the prompt writer reads the query (the node's inputs), the step's task, and the
best past (query, reward, instruction) examples, and writes an instruction for this query; then
the node answers with its own instruction followed by the written one. The examples are the
writer's in-context memory, gathered at compile time (after TRPrompt: textual rewards, no
fine-tuning); they are saved with the program as node state and loaded with it.

Example:
    >>> qp = QueryPrompt(task="Classify support messages.", examples=[], k=3)
    >>> QueryPrompt.load(qp.dump()).k
    3
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import dspy

__all__ = ["WRITER_INSTRUCTION", "QueryPrompt", "format_query"]

logger = logging.getLogger(__name__)

WRITER_INSTRUCTION = ("You write the instruction for one step of an LLM pipeline, tailored to the query at hand. "
                      "Study the past examples: each shows a query, the instruction written for it, and the "
                      "reward it earned (a score and a reviewer's comment). Write a short, specific instruction "
                      "for the new query that does what the high-reward instructions did and avoids what the "
                      "comments criticise.")
MAX_INSTRUCTION_CHARS = 1000


def format_query(inputs: Mapping[str, Any], limit: int = 600) -> str:
    """The node's inputs as ``field: value`` lines, each value cut to ``limit`` characters."""
    return "\n".join(f"{k}: {str(v)[:limit]}" for k, v in inputs.items())


def _signature(instructions: str) -> type[dspy.Signature]:
    return dspy.Signature({
        "task": (str, dspy.InputField(desc="what the step does, and its own instruction")),
        "past_examples": (str, dspy.InputField(desc="past queries, the instruction written, its reward")),
        "query": (str, dspy.InputField(desc="the new query: the step's inputs")),
        "instruction": (str, dspy.OutputField(desc="the instruction for this query")),
    }, instructions)


@dataclass
class QueryPrompt:
    """A node's prompt writer and its memory of past (query, instruction, reward) examples.

    Attributes:
        task: What the step does (given to the writer).
        examples: ``{"query", "instruction", "reward", "score"}`` dicts from compile time.
        k: The best examples shown to the writer per query.
        writer_instruction: The writer's own instruction.
        lm: The writer's LM at run time (the task LM when None); not saved.
    """

    task: str
    examples: list[dict[str, Any]] = field(default_factory=list)
    k: int = 4
    writer_instruction: str = WRITER_INSTRUCTION
    lm: Any = None

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self.written: list[tuple[str, str]] = []  # (query, instruction) written in this process; not saved

    def best(self) -> list[dict[str, Any]]:
        """The ``k`` highest-scoring examples, best last (nearest the query)."""
        ranked = sorted(self.examples, key=lambda e: float(e.get("score") or 0.0), reverse=True)[: self.k]
        return list(reversed(ranked))

    def past_text(self) -> str:
        blocks = [f"Query:\n{e['query']}\nInstruction: {e['instruction']}\nReward: {e['reward']}" for e in self.best()]
        return "\n\n".join(blocks) or "(none yet)"

    def write(self, inputs: Mapping[str, Any]) -> str:
        """One LM call: the instruction for this query ("" when the writer's answer is unusable)."""
        query = format_query(inputs)
        settings = {"trace": []}  # the writer is not a pipeline step: keep it out of DSPy's trace
        if self.lm is not None:
            settings["lm"] = self.lm
        try:
            with dspy.context(**settings):
                answer = dspy.Predict(_signature(self.writer_instruction))(
                    task=self.task, past_examples=self.past_text(), query=query)
            text = str(answer.instruction or "").strip()[:MAX_INSTRUCTION_CHARS]
        except Exception as exc:  # the step still runs on its own instruction
            logger.warning("query-aware prompt writer failed (%s); the step uses its own instruction",
                           str(exc)[:200])
            text = ""
        with self._lock:
            self.written.append((query, text))
        return text

    def __deepcopy__(self, memo: dict) -> QueryPrompt:  # the lock cannot be copied; the state can
        copied = QueryPrompt.load(self.dump())
        copied.lm = self.lm
        return copied

    def dump(self) -> dict[str, Any]:
        return {"task": self.task, "examples": list(self.examples), "k": self.k,
                "writer_instruction": self.writer_instruction}

    @classmethod
    def load(cls, state: Mapping[str, Any]) -> QueryPrompt:
        return cls(task=str(state["task"]), examples=list(state.get("examples") or []), k=int(state.get("k", 4)),
                   writer_instruction=str(state.get("writer_instruction") or WRITER_INSTRUCTION))
