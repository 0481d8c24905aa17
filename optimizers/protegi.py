"""ProTeGi: prompt optimization with textual gradients (Pryzant et al. 2023).

Each step expands every prompt of the beam: the prompt runs on a minibatch of trainset examples;
from the examples it got wrong, the LM writes reasons the prompt failed (the *textual gradient*);
the LM then edits the prompt against those reasons, and each edit is paraphrased (Monte Carlo
successors). The beam of the next step is chosen from the old beam and its successors by a
bandit on minibatches: UCB (``bandit=ucb``) or successive rejects (``bandit=sr``), each pull
scoring one candidate on ``pull_size`` random trainset examples. Beam members are then scored on
the valset sample. In a pipeline, the node whose validators fail most on a minibatch is the one
rewritten.

LM calls per step, at most: beam x (minibatch_size x nodes + gradients + gradients x
edits_per_gradient x (1 + paraphrases)) + pulls x pull_size x nodes + beam x val_size x nodes.
"""

from __future__ import annotations

import math
from typing import Any

import dspy

from optimizers.textual import Candidate, TextualOptimizer, clean_instruction
from programs.errors import ConfigError

__all__ = ["ProTeGi"]

BANDITS = ("ucb", "sr")


class Gradient(dspy.Signature):
    """I'm trying to write an instruction for one step of an LLM pipeline. The current instruction gets the
    failing examples below wrong. Give reasons why the instruction could have gotten these examples wrong."""

    task: str = dspy.InputField(desc="the step the instruction is for")
    current_instruction: str = dspy.InputField()
    failing_examples: str = dspy.InputField(desc="inputs, the wrong output, the expected output, feedback")
    reasons: str = dspy.OutputField(desc="a short numbered list of reasons the instruction failed")


class Edit(dspy.Signature):
    """I'm trying to write an instruction for one step of an LLM pipeline. The current instruction gets the
    failing examples below wrong, for the reasons given. Based on these, write an improved instruction."""

    task: str = dspy.InputField(desc="the step the instruction is for")
    current_instruction: str = dspy.InputField()
    failing_examples: str = dspy.InputField()
    reasons: str = dspy.InputField(desc="the problem with the current instruction")
    improved_instruction: str = dspy.OutputField(desc="the new instruction, complete and self-contained")


class ProTeGi(TextualOptimizer):
    """Textual gradients with beam search and bandit selection.

    Args:
        steps: Expansion steps.
        beam_width: Prompts kept per step.
        minibatch_size: Trainset examples a prompt runs on to find its errors.
        errors_per_gradient: Failing examples shown in one gradient prompt.
        gradients: Gradient prompts per expanded prompt.
        edits_per_gradient: Edited prompts per gradient.
        paraphrases: Paraphrases per edited prompt (Monte Carlo successors).
        bandit: ``ucb`` (upper confidence bound) or ``sr`` (successive rejects).
        pulls: Bandit pulls per step (UCB); successive rejects spreads the same number over its phases.
        pull_size: Trainset examples per pull.
        ucb_c: UCB's exploration constant.
        **common: See ``TextualOptimizer``.
    """

    method = "protegi"

    def __init__(self, metric: Any = None, *, steps: int = 2, beam_width: int = 2, minibatch_size: int = 4,
                 errors_per_gradient: int = 3, gradients: int = 1, edits_per_gradient: int = 1,
                 paraphrases: int = 1, bandit: str = "ucb", pulls: int = 6, pull_size: int = 2,
                 ucb_c: float = 1.0, **common: Any) -> None:
        super().__init__(metric, **common)
        if bandit not in BANDITS:
            raise ConfigError(f"--param bandit={bandit!r}: choose one of {', '.join(BANDITS)}")
        for name, value in (("steps", steps), ("beam_width", beam_width), ("minibatch_size", minibatch_size),
                            ("errors_per_gradient", errors_per_gradient), ("gradients", gradients),
                            ("edits_per_gradient", edits_per_gradient), ("pull_size", pull_size)):
            if int(value) < 1:
                raise ConfigError(f"--param {name}={value}: expected a number >= 1")
        self.steps, self.beam_width, self.minibatch_size = int(steps), int(beam_width), int(minibatch_size)
        self.errors_per_gradient, self.gradients = int(errors_per_gradient), int(gradients)
        self.edits_per_gradient, self.paraphrases = int(edits_per_gradient), int(paraphrases)
        self.bandit, self.pulls, self.pull_size, self.ucb_c = bandit, int(pulls), int(pull_size), float(ucb_c)
        self.gradient_log: list[dict[str, Any]] = []

    def search(self) -> None:
        beam = [self.history[0]]
        for step in range(1, self.steps + 1):
            successors: list[Candidate] = []
            for prompt in beam:
                successors += self.expand(prompt, step)
            pool = beam + successors
            if len(pool) > self.beam_width:
                beam = self.select(pool, step)
            else:
                beam = pool
            for candidate in beam:
                if candidate.score is None:
                    self.score(candidate)

    def expand(self, prompt: Candidate, step: int) -> list[Candidate]:
        """Errors on a minibatch -> gradients -> edits -> paraphrases."""
        evaluation = self.evaluate(prompt.instructions, self.minibatch(self.minibatch_size), kind="minibatch",
                                   candidate=prompt)
        node = self.target_node(evaluation)
        errors = evaluation.failures(node)
        if not errors:
            return []
        task = self.task_description(node)
        successors = []
        for _ in range(self.gradients):
            shown = errors if len(errors) <= self.errors_per_gradient else self.rng.sample(errors,
                                                                                           self.errors_per_gradient)
            failing = self.describe_failures(node, shown, limit=self.errors_per_gradient)
            answer = self.ask(Gradient, task=task, current_instruction=prompt.instructions[node],
                              failing_examples=failing)
            reasons = str(answer.reasons).strip() if answer is not None and answer.reasons else ""
            if not reasons:
                continue
            self.gradient_log.append({"step": step, "candidate": prompt.id, "node": node, "reasons": reasons})
            for _ in range(self.edits_per_gradient):
                edit = self.ask(Edit, task=task, current_instruction=prompt.instructions[node],
                                failing_examples=failing, reasons=reasons)
                text = clean_instruction(edit.improved_instruction if edit is not None else None)
                if not text or text == prompt.instructions[node]:
                    continue
                child = self.candidate(prompt, node, text, origin="edit", step=step)
                successors.append(child)
                for _ in range(self.paraphrases):
                    variant = self.paraphrase(child, node, step=step)
                    if variant is not None:
                        successors.append(variant)
        return successors

    def _pull(self, candidate: Candidate) -> float:
        evaluation = self.evaluate(candidate.instructions, self.minibatch(self.pull_size), kind="pull",
                                   candidate=candidate)
        candidate.pulls.append(evaluation.score)
        return evaluation.score

    def select(self, pool: list[Candidate], step: int) -> list[Candidate]:
        """The next beam: the ``beam_width`` best of ``pool`` by mean minibatch reward."""
        if self.bandit == "ucb":
            for t in range(1, self.pulls + 1):
                untried = [c for c in pool if not c.pulls]

                def ucb(c: Candidate, t: int = t) -> float:
                    mean = sum(c.pulls) / len(c.pulls)
                    return mean + self.ucb_c * math.sqrt(math.log(t) / len(c.pulls))

                self._pull(untried[0] if untried else max(pool, key=ucb))
            ranked = sorted(pool, key=lambda c: -(sum(c.pulls) / len(c.pulls)) if c.pulls else 1.0)
            return ranked[: self.beam_width]
        # Successive rejects (Audibert & Bubeck 2010): phases with equal pulls, the worst dropped each phase.
        alive = list(pool)
        phases = len(alive) - self.beam_width
        per_phase = max(1, self.pulls // max(1, phases * len(alive)))
        while len(alive) > self.beam_width:
            for candidate in alive:
                for _ in range(per_phase):
                    self._pull(candidate)
            alive.remove(min(alive, key=lambda c: sum(c.pulls) / len(c.pulls)))
        return alive

    def report(self) -> dict[str, Any]:
        return {"gradients": self.gradient_log[-10:]}
