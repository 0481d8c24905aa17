"""Composition: node verdicts -> one pipeline score and feedback, usable as a DSPy metric."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import dspy

from metrics.validators import validators_for
from metrics.verdict import Verdict, combine
from programs.errors import PipecError, PipelineError
from programs.pipeline import Pipeline
from programs.trace import NodeCall, calls_from_dspy_trace, node_calls

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

    def judge(self, example: Any, prediction: Any, trace: Any = None) -> dict[str, Verdict]:
        """One Verdict per node, in node order, for what each node produced.

        The node calls come from the prediction (a pipeline's Prediction carries them, see
        ``programs.trace``) or else from DSPy's ``trace`` (what DSPy's bootstrap passes), never
        from the prediction's fields. ``prediction=None`` means the pipeline failed.
        """
        calls = node_calls(prediction)
        if calls is None and trace:
            calls = calls_from_dspy_trace(self.pipeline, trace)
        if calls is None:
            calls = []
            if prediction is not None:
                logger.debug("%s: the prediction carries no node calls; was the pipeline called directly?",
                             self.__name__)
        return self.judge_calls(example, calls, failed=prediction is None)

    def judge_calls(self, example: Any, calls: Sequence[NodeCall], *, failed: bool = False) -> dict[str, Verdict]:
        """One Verdict per node for its calls in ``calls``.

        A node called several times gets every call judged and the verdicts combined. A node
        that was not called fails when it has a gold output (or when the pipeline ``failed``) and
        is left out otherwise (a branch not taken). A call whose LM failed is not graded: left out
        of the means like a judge that could not judge, and counted in ``details["lm_errors"]``.
        """
        by_node: dict[str, list[NodeCall]] = {}
        for call in calls:
            by_node.setdefault(call.node, []).append(call)
        verdicts = {}
        for name, node in self.nodes.items():
            field = self.gold.get(name)
            gold = example.get(field) if field and example is not None else None
            mine = by_node.get(name, [])
            if not mine:
                if failed:
                    verdicts[name] = Verdict.fail("the pipeline failed before this node produced output.")
                elif field is not None:
                    verdicts[name] = Verdict.fail(f"node {name!r} was not called, so it produced no "
                                                  f"{node.output_field!r}.")
                else:
                    verdicts[name] = Verdict(1.0, True, "", {"called": False}, counted=False)
                continue
            verdicts[name] = combine(self._judge_call(name, node, call, gold, example) for call in mine)
        return verdicts

    def _judge_call(self, name: str, node: Any, call: NodeCall, gold: Any, example: Any) -> Verdict:
        if call.error is not None:
            if call.lm_error:
                return Verdict.abstain(f"not graded: the LM did not answer ({call.error}).", lm_errors=1)
            return Verdict.fail(f"the node raised {call.error}")
        output = call.output
        if output is None:
            return Verdict.fail(f"the node produced no {node.output_field!r}.")
        seen = dspy.Prediction(**{**call.inputs, **(call.outputs or {})})  # the call's own inputs and outputs
        checks = []
        for validator in self.validators[name]:
            try:
                checks.append(validator(output, gold=gold, example=example, prediction=seen, node=node))
            except PipecError:
                raise  # an LM that cannot answer (a judge's), a bad setting: an error, never a score
            except Exception as exc:  # a broken user validator is a failed check, not a crash
                logger.warning("validator %r of node %s raised %s: %s", validator, name, type(exc).__name__, exc)
                checks.append(Verdict.fail(f"validator {type(validator).__name__} raised {exc}"))
        return combine(checks)

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
        verdicts = self.judge(example, prediction, trace)
        score = self.score(verdicts)
        if self.feedback or pred_name is not None:
            return dspy.Prediction(score=score, feedback=self.feedback_text(verdicts, pred_name))
        if trace is not None:
            return all(v.passed for v in verdicts.values())
        return score
