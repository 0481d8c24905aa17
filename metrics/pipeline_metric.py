"""Composition: node verdicts -> one pipeline score and feedback, usable as a DSPy metric."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import dspy

from metrics.validators import validators_for
from metrics.verdict import Verdict, combine
from programs.errors import PipelineError
from programs.pipeline import Pipeline

__all__ = ["PipelineMetric"]

logger = logging.getLogger(__name__)


class PipelineMetric:
    """Judges every node of a pipeline's prediction and combines the verdicts.

    As a DSPy metric it returns what each caller needs:

    - ``metric(example, pred)`` -> the weighted mean node score, a float (Evaluate, random search);
    - ``metric(example, pred, trace)`` with a trace -> whether every node passed (bootstrap's
      acceptance test for a demo);
    - ``metric(example, pred, trace, pred_name, pred_trace)`` (GEPA), or any call when
      ``feedback=True`` -> ``dspy.Prediction(score=..., feedback=...)``, where the feedback is
      the named node's own when ``pred_name`` is given and every failing node's otherwise.

    A node whose checks could not judge (an LLM judge that failed) is left out of the weighted
    mean, not counted as 0 or 1 (see ``metrics.verdict``).

    Args:
        pipeline: The pipeline whose nodes, gold fields and weights define the judgement.
        feedback: Always return ``dspy.Prediction(score, feedback)``.
        judge_lm: The LM of the writers' LLM judges: a ``dspy.LM``, or anything with ``lm`` and
            ``adapter`` attributes (``experiments.lm.LMConfig``). The task LM if None.

    Raises:
        PipelineError: A node's rules are unknown or invalid (the message names the node).
    """

    def __init__(self, pipeline: Pipeline, *, feedback: bool = False, judge_lm: Any = None) -> None:
        self.pipeline = pipeline
        self.nodes = pipeline.nodes()
        self.gold: Mapping[str, str] = dict(pipeline.gold)
        self.weights = {name: pipeline.weight(name) for name in self.nodes}
        lm, adapter = (judge_lm.lm, judge_lm.adapter) if hasattr(judge_lm, "adapter") else (judge_lm, None)
        self.validators = {}
        for name, node in self.nodes.items():
            try:
                self.validators[name] = validators_for(node, judge_lm=lm, judge_adapter=adapter)
            except PipelineError as exc:
                raise PipelineError(f"{type(pipeline).__name__}.{name}: {exc}") from exc
        self.feedback = feedback
        self.__name__ = f"{type(pipeline).__name__}Metric"

    def judge(self, example: Any, prediction: Any) -> dict[str, Verdict]:
        """One Verdict per node, in node order. ``prediction=None`` means the pipeline failed."""
        verdicts = {}
        for name, node in self.nodes.items():
            field = self.gold.get(name)
            gold = example.get(field) if field else None
            if prediction is None:
                verdicts[name] = Verdict.fail("the pipeline failed before this node produced output.")
                continue
            output = prediction.get(node.output_field) if hasattr(prediction, "get") else None
            if output is None:
                verdicts[name] = Verdict.fail(f"the prediction has no field {node.output_field!r}.")
                continue
            checks = []
            for validator in self.validators[name]:
                try:
                    checks.append(validator(output, gold=gold, example=example, prediction=prediction, node=node))
                except Exception as exc:  # a broken user validator is a failed check, not a crash
                    logger.warning("validator %r of node %s raised %s: %s", validator, name, type(exc).__name__, exc)
                    checks.append(Verdict.fail(f"validator {type(validator).__name__} raised {exc}"))
            verdicts[name] = combine(checks)
        return verdicts

    def score(self, verdicts: Mapping[str, Verdict]) -> float:
        """The weighted mean of the counted node scores (0 when no node could be judged)."""
        counted = {name: v for name, v in verdicts.items() if v.counted}
        total = sum(self.weights[name] for name in counted)
        if total == 0:
            return 0.0
        return sum(self.weights[name] * v.score for name, v in counted.items()) / total

    @staticmethod
    def feedback_text(verdicts: Mapping[str, Verdict], node: str | None = None) -> str:
        """The feedback of ``node``, or of every failing node as ``name: feedback`` lines."""
        if node is not None and node in verdicts:
            v = verdicts[node]
            return v.feedback or "This step's output was correct."
        lines = [f"{name}: {v.feedback}" for name, v in verdicts.items() if not v.passed]
        return "\n".join(lines) or "All steps were correct."

    def __call__(self, example: Any, prediction: Any, trace: Any = None, pred_name: str | None = None,
                 pred_trace: Any = None) -> float | bool | dspy.Prediction:
        verdicts = self.judge(example, prediction)
        score = self.score(verdicts)
        if self.feedback or pred_name is not None:
            return dspy.Prediction(score=score, feedback=self.feedback_text(verdicts, pred_name))
        if trace is not None:
            return all(v.passed for v in verdicts.values())
        return score
