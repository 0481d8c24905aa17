"""OPRO: large language models as optimizers (Yang et al. 2023).

The LM sees a *meta-prompt*: the best (instruction, score) pairs found so far, sorted by score in
ascending order (so the best come last, nearest the request), and a few input/output exemplars
of the task; it writes a new instruction that should score higher. Each step samples several
instructions from the same meta-prompt (``candidates_per_step``, at temperature), scores each on
the valset sample, and adds them to the pairs. Nodes are optimized in attribution order (the node
whose validators fail most first); ``steps`` is the total over nodes.

LM calls: steps x candidates_per_step x (1 + val_size x nodes).
"""

from __future__ import annotations

from typing import Any

import dspy

from optimizers.textual import Candidate, TextualOptimizer, clean_instruction
from programs.errors import ConfigError

__all__ = ["OPRO", "meta_prompt_pairs"]


class MetaPrompt(dspy.Signature):
    """Your task is to generate the instruction for one step of an LLM pipeline. Below are some previous
    instructions with their scores, in ascending order: higher scores indicate better quality. Below them are
    exemplars of the task (input and the expected output). Generate an instruction that is different from all
    the instructions above and has a higher score than all of them."""

    task: str = dspy.InputField(desc="the step the instruction is for")
    previous_instructions: str = dspy.InputField(desc="instructions and their scores (0-100), ascending by score")
    task_exemplars: str = dspy.InputField()
    new_instruction: str = dspy.OutputField(desc="the new instruction, complete and self-contained")


def meta_prompt_pairs(pairs: list[tuple[str, float]], limit: int) -> str:
    """The ``limit`` best (instruction, score) pairs, written in ascending order of score."""
    best: dict[str, float] = {}
    for text, score in pairs:
        best[text] = max(score, best.get(text, score))
    kept = sorted(best.items(), key=lambda p: p[1], reverse=True)[:limit]
    ascending = sorted(kept, key=lambda p: p[1])
    return "\n\n".join(f"text:\n{text}\nscore:\n{round(100 * score)}" for text, score in ascending)


class OPRO(TextualOptimizer):
    """Optimization by prompting.

    Args:
        steps: Optimization steps (meta-prompts), over all nodes.
        candidates_per_step: Instructions sampled from each meta-prompt.
        max_pairs: (instruction, score) pairs kept in the meta-prompt.
        exemplars: Task exemplars (trainset input/output pairs) in the meta-prompt.
        **common: See ``TextualOptimizer``.
    """

    method = "opro"

    def __init__(self, metric: Any = None, *, steps: int = 3, candidates_per_step: int = 2, max_pairs: int = 8,
                 exemplars: int = 3, **common: Any) -> None:
        super().__init__(metric, **common)
        for name, value in (("steps", steps), ("candidates_per_step", candidates_per_step), ("max_pairs", max_pairs)):
            if int(value) < 1:
                raise ConfigError(f"--param {name}={value}: expected a number >= 1")
        self.steps, self.candidates_per_step = int(steps), int(candidates_per_step)
        self.max_pairs, self.exemplars = int(max_pairs), int(exemplars)
        self.meta_prompts: list[str] = []

    def search(self) -> None:
        original = self.history[0]
        nodes = [n for n in self.attribution() if self.last_evaluation.node_failures().get(n)] or self.attribution()
        per_node = max(1, self.steps // len(nodes))
        step = 0
        for node in nodes:
            # The meta-prompt's pairs: every instruction of this node tried so far, with its score.
            pairs: list[tuple[str, float]] = [(original.instructions[node], original.score or 0.0)]
            for _ in range(per_node):
                if step >= self.steps:
                    return
                step += 1
                previous = meta_prompt_pairs(pairs, self.max_pairs)
                self.meta_prompts.append(previous)
                exemplars = self.demos_text(node, self.minibatch(self.exemplars))
                base = self.best
                for _ in range(self.candidates_per_step):
                    answer = self.ask(MetaPrompt, task=self.task_description(node), previous_instructions=previous,
                                      task_exemplars=exemplars)
                    text = clean_instruction(answer.new_instruction if answer is not None else None)
                    if not text or any(text == t for t, _ in pairs):
                        continue
                    candidate: Candidate = self.candidate(base, node, text, origin="meta-prompt", step=step)
                    pairs.append((text, self.score(candidate)))

    def report(self) -> dict[str, Any]:
        return {"last_meta_prompt_pairs": self.meta_prompts[-1] if self.meta_prompts else ""}
