"""EvoPrompt: evolutionary prompt optimization with the LM as the operators (Guo et al. 2023).

A population of instructions (the original and paraphrases of it) evolves for ``generations``:

- ``variant=ga`` (genetic algorithm): for each child, two parents are drawn by roulette-wheel
  selection (probability proportional to score); the LM crosses them over, then mutates the
  result, in one call. Children are scored on the valset sample and the next population is the
  ``population`` best of parents and children.
- ``variant=de`` (differential evolution): for each member, the LM takes the parts where two
  other random members differ, mutates them, merges them into the best member, and crosses the
  result over with the member itself; the child replaces the member when it scores higher.

Nodes are evolved in attribution order (the node whose validators fail most first).

LM calls per node: (population - 1) x (1 + val_size x nodes) for the initial population, then
generations x population x (1 + val_size x nodes).
"""

from __future__ import annotations

from typing import Any

import dspy

from optimizers.textual import Candidate, TextualOptimizer, clean_instruction
from programs.errors import ConfigError

__all__ = ["EvoPrompt"]

VARIANTS = ("ga", "de")


class Crossover(dspy.Signature):
    """Please follow the instruction step-by-step to generate a better instruction for one step of an LLM
    pipeline. 1. Cross over the following two instructions and generate a new instruction. 2. Mutate the
    instruction generated in Step 1 and generate a final instruction."""

    task: str = dspy.InputField(desc="the step the instruction is for")
    instruction_1: str = dspy.InputField(desc="parent 1")
    instruction_2: str = dspy.InputField(desc="parent 2")
    crossover: str = dspy.OutputField(desc="step 1: the two instructions crossed over")
    final_instruction: str = dspy.OutputField(desc="step 2: the crossed-over instruction, mutated")


class DifferentialEvolution(dspy.Signature):
    """Please follow the instruction step-by-step to generate a better instruction for one step of an LLM
    pipeline. 1. Identify the different parts between instruction 1 and instruction 2. 2. Randomly mutate the
    different parts. 3. Combine the mutated parts with the best instruction, selectively replacing its parts.
    4. Cross over the result of step 3 with the basic instruction and generate a final instruction."""

    task: str = dspy.InputField(desc="the step the instruction is for")
    instruction_1: str = dspy.InputField()
    instruction_2: str = dspy.InputField()
    best_instruction: str = dspy.InputField()
    basic_instruction: str = dspy.InputField()
    different_parts: str = dspy.OutputField(desc="step 1")
    mutated_parts: str = dspy.OutputField(desc="step 2")
    combined: str = dspy.OutputField(desc="step 3")
    final_instruction: str = dspy.OutputField(desc="step 4: the final instruction")


class EvoPrompt(TextualOptimizer):
    """LM-driven evolution of instructions.

    Args:
        variant: ``ga`` or ``de``.
        population: Population size (the original included).
        generations: Generations per node.
        **common: See ``TextualOptimizer``.
    """

    method = "evoprompt"

    def __init__(self, metric: Any = None, *, variant: str = "ga", population: int = 3, generations: int = 2,
                 **common: Any) -> None:
        super().__init__(metric, **common)
        if variant not in VARIANTS:
            raise ConfigError(f"--param variant={variant!r}: choose one of {', '.join(VARIANTS)}")
        if int(population) < 2 or int(generations) < 1:
            raise ConfigError(f"--param population={population} generations={generations}: need population >= 2 "
                              "and generations >= 1")
        self.variant, self.population, self.generations = variant, int(population), int(generations)

    def search(self) -> None:
        failing = self.last_evaluation.node_failures()
        nodes = [n for n in self.attribution() if failing.get(n)] or self.attribution()
        for node in nodes:
            base = self.best
            population: list[Candidate] = [base]
            while len(population) < self.population:
                variant = self.paraphrase(base, node, step=0)
                if variant is None:
                    break
                self.score(variant)
                population.append(variant)
            for generation in range(1, self.generations + 1):
                if self.variant == "ga":
                    population = self._ga(population, node, generation)
                else:
                    population = self._de(population, node, generation)

    def roulette(self, population: list[Candidate]) -> Candidate:
        """One member drawn with probability proportional to its score (uniform when all are 0)."""
        weights = [max(c.score or 0.0, 0.0) + 1e-6 for c in population]
        return self.rng.choices(population, weights=weights, k=1)[0]

    def _ga(self, population: list[Candidate], node: str, generation: int) -> list[Candidate]:
        children = []
        for _ in range(self.population):
            first = self.roulette(population)
            others = [c for c in population if c is not first] or population
            second = self.roulette(others)
            answer = self.ask(Crossover, task=self.task_description(node), instruction_1=first.instructions[node],
                              instruction_2=second.instructions[node])
            text = clean_instruction(answer.final_instruction if answer is not None else None)
            if not text:
                continue
            child = self.candidate(first, node, text, origin=f"crossover+mutation of {first.id},{second.id}",
                                   step=generation)
            self.score(child)
            children.append(child)
        return sorted(population + children, key=lambda c: -(c.score or 0.0))[: self.population]

    def _de(self, population: list[Candidate], node: str, generation: int) -> list[Candidate]:
        best = max(population, key=lambda c: c.score or 0.0)
        result = list(population)
        for i, member in enumerate(population):
            others = [c for c in population if c is not member]
            first, second = self.rng.sample(others, 2) if len(others) >= 2 else (others[0], others[0])
            answer = self.ask(DifferentialEvolution, task=self.task_description(node),
                              instruction_1=first.instructions[node], instruction_2=second.instructions[node],
                              best_instruction=best.instructions[node], basic_instruction=member.instructions[node])
            text = clean_instruction(answer.final_instruction if answer is not None else None)
            if not text:
                continue
            child = self.candidate(member, node, text, origin=f"differential evolution of {member.id}",
                                   step=generation)
            if self.score(child) > (member.score or 0.0):
                result[i] = child
        return result
