"""Query-aware prompts, after TRPrompt (textual reward prompt optimization).

A prompt-writer gets attached to a node (``programs.query_prompt.QueryPrompt``): for each query
it writes an instruction, the node answers with its own instruction plus that one, and a judge
writes a *textual reward* (its score and comment on the output against the gold output, with the
node's validator feedback). Without any fine-tuning, the writer improves in context: every later
query is written with the best past (query, reward, instruction) examples in its prompt. The
compile gathers those examples on ``queries`` trainset examples (``rounds`` times), then scores
the program with its writer on the valset sample; like every optimizer here, it is kept only when
it scores above the original.

**The compiled program makes two LM calls per query at inference on the rewritten node** (the
writer, then the task); the writer and its examples are saved with the program and loaded with it.

LM calls: rounds x queries x (1 writer + nodes + 1 judge) + val_size x (nodes + 1).
"""

from __future__ import annotations

from typing import Any

from optimizers.textual import Candidate, TextualOptimizer
from programs.errors import ConfigError
from programs.query_prompt import QueryPrompt, format_query

__all__ = ["QueryAware"]


class QueryAware(TextualOptimizer):
    """A per-query prompt writer that learns in context from textual rewards.

    Args:
        queries: Trainset queries per round whose (instruction, reward) become the writer's examples.
        rounds: Rounds over fresh queries (later rounds write with the earlier rounds' examples).
        k: Past examples shown to the writer per query.
        judge: Ask a judge LM for a comment on each output (the textual reward); otherwise the
            reward is the node's validator feedback alone.
        judge_lm: The judge LM; default: the LM of the pipeline's own judges, else the task LM.
        **common: See ``TextualOptimizer`` (``nodes`` picks the node; default: the one failing most).
    """

    method = "query-aware"

    def __init__(self, metric: Any = None, *, queries: int = 4, rounds: int = 1, k: int = 3, judge: bool = True,
                 judge_lm: Any = None, **common: Any) -> None:
        super().__init__(metric, **common)
        if int(queries) < 1 or int(k) < 1:
            raise ConfigError(f"--param queries={queries} k={k}: expected numbers >= 1")
        self.queries, self.rounds, self.k, self.use_judge = int(queries), max(1, int(rounds)), int(k), bool(judge)
        self.judge_lm = judge_lm
        self.rewards: list[dict[str, Any]] = []

    def search(self) -> None:
        node = self.target_node()
        step = self._student.nodes()[node]
        memory = QueryPrompt(task=f"{self.task_description(node)} Its own instruction: {step.signature.instructions}",
                             k=self.k)  # the writer runs on the task LM, at compile time as at inference
        judge = self.feedback_judge(self.judge_lm) if self.use_judge else None
        original = self.history[0]
        for round_ in range(1, self.rounds + 1):
            queries = self.minibatch(self.queries)
            rollout = Candidate(f"rollout{round_}", dict(original.instructions), parent=original.id, step=round_,
                                origin="rollout", node=node, attach={node: memory})
            written_before = len(memory.written)
            evaluation = self.evaluate(original.instructions, queries, kind="rollout", candidate=rollout)
            written = dict(memory.written[written_before:])
            for outcome in evaluation.outcomes:
                query = format_query(self.node_inputs(node, outcome))
                instruction = written.get(query)
                if instruction is None:
                    continue
                verdict = outcome.verdicts[node]
                reward = f"score {verdict.score:.2f}"
                if verdict.feedback:
                    reward += f"; {verdict.feedback}"
                if judge is not None and self.gold(node, outcome.example) is not None and self.affords(1):
                    output = self.node_output(node, outcome)
                    judged = judge(output, gold=self.gold(node, outcome.example), example=outcome.example,
                                   prediction=outcome.prediction, node=step)
                    comment = judged.details.get("judge_comment")
                    if comment:
                        reward += f"; reviewer: {comment}"
                example = {"query": query, "instruction": instruction, "reward": reward, "score": verdict.score}
                memory.examples.append(example)
                self.rewards.append({"round": round_, **example})
        candidate = Candidate("c1", dict(original.instructions), parent=original.id, step=self.rounds,
                              origin="query-aware", node=node, attach={node: memory})
        self._counter = 1
        self.score(candidate)

    def report(self) -> dict[str, Any]:
        return {"inference_lm_calls_per_query": "2 on the query-aware node (prompt writer + task)",
                "examples": len(self.rewards), "rewards": self.rewards[-5:]}
