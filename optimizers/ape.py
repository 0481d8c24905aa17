"""APE: automatic prompt engineer (Zhou et al. 2022).

*Forward generation*: the LM is shown input/output demos of a step (trainset inputs and their
gold outputs) and asked for the instruction that produced them; ``proposals`` instructions are
generated, each from its own sample of ``demos_per_proposal`` demos. Every proposal is scored on
the valset sample; the ``top_k`` best are resampled as paraphrases (*iterative Monte Carlo
search*, ``rounds`` times) and scored too. The best instruction overall wins (the original is a
candidate). Nodes are taken in attribution order (most failures first), while the budget lasts.

LM calls per node: (proposals + rounds x top_k x paraphrases) x (1 + val_size x nodes).
"""

from __future__ import annotations

from typing import Any

import dspy

from optimizers.textual import Candidate, TextualOptimizer, clean_instruction
from programs.errors import ConfigError

__all__ = ["APE"]


class ForwardGeneration(dspy.Signature):
    """I gave a friend an instruction and some inputs. The friend read the instruction and wrote an output
    for every one of the inputs. Here are the input-output pairs. What was the instruction?"""

    task: str = dspy.InputField(desc="the step the instruction is for")
    demonstrations: str = dspy.InputField(desc="input-output pairs")
    instruction: str = dspy.OutputField(desc="the instruction, complete and self-contained")


class APE(TextualOptimizer):
    """Instruction induction from demos, then Monte Carlo resampling of the best.

    Args:
        proposals: Instructions generated from demos per node.
        demos_per_proposal: Input/output demos shown per generation.
        top_k: Best instructions resampled per round.
        paraphrases: Paraphrases of each of the top_k per round.
        rounds: Monte Carlo rounds.
        **common: See ``TextualOptimizer``.
    """

    method = "ape"

    def __init__(self, metric: Any = None, *, proposals: int = 3, demos_per_proposal: int = 4, top_k: int = 1,
                 paraphrases: int = 2, rounds: int = 1, **common: Any) -> None:
        super().__init__(metric, **common)
        for name, value in (("proposals", proposals), ("demos_per_proposal", demos_per_proposal), ("top_k", top_k)):
            if int(value) < 1:
                raise ConfigError(f"--param {name}={value}: expected a number >= 1")
        self.proposals, self.demos_per_proposal = int(proposals), int(demos_per_proposal)
        self.top_k, self.paraphrases, self.rounds = int(top_k), int(paraphrases), int(rounds)

    def search(self) -> None:
        failing = self.last_evaluation.node_failures()
        nodes = [n for n in self.attribution() if failing.get(n)] or self.attribution()
        for node in nodes:
            base = self.best
            labelled = [e for e in self.trainset if self.gold(node, e) is not None]
            if not labelled:
                continue
            scored: list[Candidate] = []
            for _ in range(self.proposals):
                demos = self.demos_text(node, self.minibatch(self.demos_per_proposal, labelled))
                answer = self.ask(ForwardGeneration, task=self.task_description(node), demonstrations=demos)
                text = clean_instruction(answer.instruction if answer is not None else None)
                if text:
                    candidate = self.candidate(base, node, text, origin="forward-generation", step=1)
                    self.score(candidate)
                    scored.append(candidate)
            for round_ in range(2, self.rounds + 2):
                top = sorted(scored, key=lambda c: -(c.score or 0.0))[: self.top_k]
                for parent in top:
                    for _ in range(self.paraphrases):
                        variant = self.paraphrase(parent, node, step=round_)
                        if variant is not None:
                            self.score(variant)
                            scored.append(variant)
