"""Judge-feedback rewriting, in the spirit of LangChain's promptim.

Epochs over minibatches of the trainset. On each minibatch the current best program runs; for
the examples where the node with most validator failures got it wrong, a judge LM
(``metrics.LLMJudge``) returns a score and a comment saying how to get closer to the gold output
(a node whose own validators include an LLM judge reuses that judge's comment instead of asking
again). A rewriting LM reads the current instruction, the failing examples with their scores,
validator feedback and judge comments, and writes a new instruction. The rewrite is kept only if
it scores higher on the valset sample than the current best. The score after each epoch is in
``epoch_scores`` (and the compile run's ``best_score`` metric).

LM calls per minibatch: minibatch_size x nodes + up to max_failures judge calls (each retried
up to twice on a malformed answer) + 1 rewrite + val_size x nodes to score it.
"""

from __future__ import annotations

from typing import Any

import dspy

from metrics.judge import LLMJudge
from optimizers.textual import TextualOptimizer, clean_instruction
from programs.errors import ConfigError

__all__ = ["FeedbackRewrite"]

class Rewrite(dspy.Signature):
    """You improve the instruction of one step of an LLM pipeline. Read the current instruction and the examples
    it got wrong, with their scores, the validators' feedback and a reviewer's comments on how to get closer to
    the expected output. Write a new instruction that fixes these failures and keeps what already works."""

    task: str = dspy.InputField(desc="the step the instruction is for")
    current_instruction: str = dspy.InputField()
    failing_examples: str = dspy.InputField(desc="inputs, output, expected output, score, feedback, judge comment")
    new_instruction: str = dspy.OutputField(desc="the rewritten instruction, complete and self-contained")


class FeedbackRewrite(TextualOptimizer):
    """Epochs of judge comments -> rewrite -> keep if the valset score improves.

    Args:
        epochs: Passes over the trainset.
        minibatch_size: Trainset examples per minibatch.
        batches_per_epoch: Minibatches per epoch (0: the whole trainset).
        max_failures: Failing examples judged and shown to the rewriter per minibatch.
        judge_lm: The judge LM; default: the LM of the pipeline's own LLM judges, else the task LM.
        **common: See ``TextualOptimizer``.
    """

    method = "feedback"

    def __init__(self, metric: Any = None, *, epochs: int = 2, minibatch_size: int = 4, batches_per_epoch: int = 2,
                 max_failures: int = 3, judge_lm: Any = None, **common: Any) -> None:
        super().__init__(metric, **common)
        for name, value in (("epochs", epochs), ("minibatch_size", minibatch_size), ("max_failures", max_failures)):
            if int(value) < 1:
                raise ConfigError(f"--param {name}={value}: expected a number >= 1")
        self.epochs, self.minibatch_size = int(epochs), int(minibatch_size)
        self.batches_per_epoch, self.max_failures = int(batches_per_epoch), int(max_failures)
        self.judge_lm = judge_lm
        self.epoch_scores: list[dict[str, Any]] = []
        self.comments: list[str] = []

    def search(self) -> None:
        judge = self.feedback_judge(self.judge_lm)
        for epoch in range(1, self.epochs + 1):
            order = list(self.trainset)
            self.rng.shuffle(order)
            batches = [order[i:i + self.minibatch_size] for i in range(0, len(order), self.minibatch_size)]
            if self.batches_per_epoch:
                batches = batches[: self.batches_per_epoch]
            self._kept = 0
            try:
                self._epoch(judge, batches, epoch)
            finally:  # a budget stop mid-epoch still records where the epoch got to
                self.epoch_scores.append({"epoch": epoch, "best_score": self.best.score, "kept": self._kept})

    def _epoch(self, judge: LLMJudge, batches: list[list[dspy.Example]], epoch: int) -> None:
        for batch in batches:
            current = self.best
            evaluation = self.evaluate(current.instructions, batch, kind="minibatch", candidate=current)
            node = self.target_node(evaluation)
            failures = evaluation.failures(node)[: self.max_failures]
            if not failures:
                continue
            comments = {}
            for outcome in failures:
                verdict = outcome.verdicts[node]
                comment = verdict.details.get("judge_comment")
                if comment is None:
                    if not self.affords(1):
                        break
                    output = self.node_output(node, outcome)
                    judged = judge(output, gold=self.gold(node, outcome.example), example=outcome.example,
                                   prediction=outcome.prediction, node=self._student.nodes()[node])
                    comment = judged.details.get("judge_comment")
                    if comment is not None:
                        comment = f"(score {judged.details.get('judge_score', judged.score):.2f}) {comment}"
                if comment:
                    comments[id(outcome)] = str(comment)
                    self.comments.append(str(comment))
            failing = self.describe_failures(node, failures, limit=self.max_failures, comments=comments)
            answer = self.ask(Rewrite, task=self.task_description(node), current_instruction=current.instructions[node],
                              failing_examples=failing)
            text = clean_instruction(answer.new_instruction if answer is not None else None)
            if not text or text == current.instructions[node]:
                continue
            candidate = self.candidate(current, node, text, origin="rewrite", step=epoch)
            before = self.best
            self.score(candidate)
            self._kept += self.best is not before

    def report(self) -> dict[str, Any]:
        return {"epoch_scores": self.epoch_scores, "judge_comments": self.comments[-5:]}
