"""LLM-as-judge for writer nodes: a rubric (and the gold output, when there is one) goes to a
judge LM, which may differ from the task LM; its answer is a typed, pydantic-validated
structure whose comment becomes the verdict's feedback.

Two modes:

- ``score``: ``{score: 0..1, comment}``; the output passes when ``score >= pass_score``.
- ``binary``: ``{passed: bool, reason}``; the score is 1 or 0.

A malformed answer (unparseable, out of range, an empty comment) is retried ``retries`` times,
each time with the reason of the rejection added to the prompt (which also keeps DSPy's cache
from replaying the same answer). When every attempt fails the output is **not graded**: the
verdict is :meth:`Verdict.abstain` with ``details["judge_failures"] = 1``. It is left out of the
node's and the pipeline's mean (neither a silent 0 nor a silent 1), it does not pass
(bootstrapping will not take it as a demo), and evaluations count it.

A judge LM that fails is not a malformed answer. A configuration error (no key, unknown model,
unreachable server: ``LMConfigError``) is raised: nothing can be graded until it is fixed. Any
other LM failure (after the LM's own retries with backoff) makes the output not graded with
``details["lm_errors"] = 1``: counted as an LM error, never a score.

Example:
    >>> judge = LLMJudge("The reply apologises and gives a date.", lm=judge_lm)  # doctest: +SKIP
    >>> judge("Sorry! It ships Monday.", gold="We apologise; it ships on Monday.").score  # doctest: +SKIP
    0.9
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import dspy
import pydantic
from dspy.utils.exceptions import LMError as DSPyLMError

from metrics.verdict import Verdict
from programs.errors import LMConfigError, LMError, PipelineError
from programs.nodes import Node

__all__ = ["JUDGE_MODES", "BinaryJudgement", "JudgeDemoSource", "LLMJudge", "ScoreJudgement", "judge_examples",
           "rubric_id"]

logger = logging.getLogger(__name__)

JUDGE_MODES = ("score", "binary")
# A bound on the comment keeps a small judge model from rambling to its token limit (constrained
# decoding enforces it) and keeps feedback short enough to read in a reflection prompt.
_COMMENT_CHARS = 500


class ScoreJudgement(pydantic.BaseModel):
    """A graded answer: how well the output meets the rubric, and what to change."""

    score: float = pydantic.Field(ge=0.0, le=1.0, description="0 = fails the rubric, 1 = meets it fully")
    comment: str = pydantic.Field(min_length=1, max_length=_COMMENT_CHARS,
                                  description="one or two sentences: what to change, specifically, or why it is good")


class BinaryJudgement(pydantic.BaseModel):
    """A pass/fail answer with its reason."""

    passed: bool = pydantic.Field(description="whether the output meets the rubric")
    reason: str = pydantic.Field(min_length=1, max_length=_COMMENT_CHARS,
                                 description="one or two sentences: why, and what to change when it fails")


_ANSWERS: dict[str, type[pydantic.BaseModel]] = {"score": ScoreJudgement, "binary": BinaryJudgement}
_INSTRUCTIONS = ("You are a strict reviewer. Grade the candidate output of a writing step against the rubric, "
                 "comparing it with the reference output when one is given. Say specifically what to change.")


def rubric_id(rubric: str) -> str:
    """The validator name of the judge with this rubric (``judge:`` + 10 hex digits of its
    sha256): how the store's verdicts and human labels name the rubric they answer."""
    return "judge:" + hashlib.sha256(str(rubric).strip().encode("utf-8")).hexdigest()[:10]


@runtime_checkable
class JudgeDemoSource(Protocol):
    """Where a judge's few-shot demos come from per call (human-labelled examples, for one).

    ``judge_demos`` returns at most ``k`` rows in :func:`judge_examples`' format, best first.
    The judge calls it once per grading; a source that raises or returns nothing leaves the
    judge with its fixed demos. ``experiments.alignment.LabelledJudgeDemos`` implements it over
    the store's human labels; the judge itself never knows the store.
    """

    def judge_demos(self, *, validator: str, rubric: str, task_inputs: str, candidate: str,
                    k: int) -> Sequence[Mapping[str, Any]]: ...


def _signature(mode: str) -> type[dspy.Signature]:
    return dspy.Signature({
        "rubric": (str, dspy.InputField(desc="what a good output does")),
        "task_inputs": (str, dspy.InputField(desc="the inputs the writing step was given")),
        "candidate": (str, dspy.InputField(desc="the output to grade")),
        "reference": (str, dspy.InputField(desc="a gold output to compare with, or (none)")),
        "judgement": (_ANSWERS[mode], dspy.OutputField()),
    }, _INSTRUCTIONS)


def _first(row: Mapping[str, Any], *names: str) -> Any:
    return next((row[n] for n in names if row.get(n) not in (None, "")), None)


def judge_examples(rows: Iterable[Mapping[str, Any]] | str | Path, *, rubric: str,
                   mode: str = "score") -> list[dspy.Example]:
    """Few-shot demos for the judge from labelled data.

    Args:
        rows: Mappings, or the path of a JSONL file of them. Each row holds the graded output
            (``candidate`` or ``output``), the label (``score`` in score mode, ``passed`` in binary
            mode), the comment (``comment`` or ``reason``), and optionally ``reference``/``gold``
            and ``task_inputs``/``inputs``.
        rubric: The rubric the labels were given against.
        mode: ``score`` or ``binary``.

    Raises:
        PipelineError: A missing file or a row without its output, label or comment.
    """
    source = "judge_examples"
    if isinstance(rows, str | Path):
        source = str(rows)
        try:
            lines = Path(rows).read_text(encoding="utf-8").splitlines()
            rows = [json.loads(line) for line in lines if line.strip()]
        except (OSError, json.JSONDecodeError) as exc:
            raise PipelineError(f"judge_examples {source}: {exc}") from exc
    demos = []
    for number, row in enumerate(rows, start=1):
        candidate = _first(row, "candidate", "output")
        comment = _first(row, "comment", "reason")
        label = _first(row, "score") if mode == "score" else row.get("passed")
        if candidate is None or comment is None or label is None:
            needs = "score" if mode == "score" else "passed"
            raise PipelineError(f"{source} row {number}: needs 'candidate' (or 'output'), '{needs}' and 'comment'"
                                f" (or 'reason'); got {sorted(row)}")
        try:
            answer = (ScoreJudgement(score=float(label), comment=str(comment)) if mode == "score"
                      else BinaryJudgement(passed=bool(label), reason=str(comment)))
        except (pydantic.ValidationError, ValueError) as exc:
            raise PipelineError(f"{source} row {number}: {exc.errors()[0]['msg'] if hasattr(exc, 'errors') else exc}"
                                ) from exc
        demos.append(dspy.Example(
            rubric=rubric, task_inputs=str(_first(row, "task_inputs", "inputs") or "(none)"),
            candidate=str(candidate), reference=str(_first(row, "reference", "gold") or "(none)"),
            judgement=answer))
    return demos


def _task_inputs(node: Node | None, example: Any, prediction: Any) -> str:
    """The node's inputs as ``name: value`` lines: upstream outputs from the prediction, the
    rest from the example."""
    if node is None:
        return "(none)"
    lines = []
    for name in node.input_fields:
        value = None
        for source in (prediction, example):
            if value is None and source is not None and hasattr(source, "get"):
                value = source.get(name)
        if value is not None:
            lines.append(f"{name}: {value}")
    return "\n".join(lines) or "(none)"


def _reason(exc: Exception) -> str:
    if isinstance(exc, pydantic.ValidationError):
        error = exc.errors()[0]
        return f"{'.'.join(str(p) for p in error['loc'])}: {error['msg']}"
    # DSPy's parse errors carry pydantic's reason in their first paragraph, then the raw response.
    first = str(exc).strip().split("\n\n")[0]
    lines = [line.strip() for line in first.splitlines() if line.strip() and "errors.pydantic.dev" not in line]
    return f"{type(exc).__name__}: {' '.join(lines)}"[:300]


class LLMJudge:
    """Writer check: a judge LM grades the output against a rubric.

    Args:
        rubric: What a good output does, in the judge's words.
        lm: The judge LM (a ``dspy.LM``); the LM in force at call time (the task LM) if None.
        adapter: The adapter for the judge LM; the one in force if None.
        mode: ``score`` (0..1 with a comment) or ``binary`` (pass/fail with a reason).
        examples: Few-shot demos (see :func:`judge_examples`), or rows/a JSONL path to build them.
        retries: Further attempts after a malformed answer (a failing judge LM is retried by the LM
            itself; see the module docstring).
        pass_score: In score mode, the lowest score that passes.
        demo_source: Chooses the demos per call (a :class:`JudgeDemoSource`); its demos replace
            the fixed ``examples`` for that call when it returns any.
        demo_k: How many demos to ask the source for.

    Attributes:
        name: The rubric's validator name (:func:`rubric_id`).
    """

    def __init__(self, rubric: str, *, lm: Any = None, adapter: Any = None, mode: str = "score",
                 examples: Iterable[Any] | str | Path = (), retries: int = 2, pass_score: float = 0.5,
                 demo_source: JudgeDemoSource | None = None, demo_k: int = 4) -> None:
        if not str(rubric).strip():
            raise PipelineError("the judge's rubric is empty; say what a good output does")
        if mode not in JUDGE_MODES:
            raise PipelineError(f"judge mode {mode!r} is not one of: {', '.join(JUDGE_MODES)}")
        if not (isinstance(retries, int) and retries >= 0):
            raise PipelineError(f"judge retries must be an integer >= 0, got {retries!r}")
        if not 0.0 <= float(pass_score) <= 1.0:
            raise PipelineError(f"judge pass score must be in [0, 1], got {pass_score!r}")
        self.rubric, self.mode, self.retries, self.pass_score = str(rubric), mode, retries, float(pass_score)
        self.lm, self.adapter = lm, adapter
        self.name = rubric_id(self.rubric)
        self.demo_source, self.demo_k = demo_source, demo_k
        self.predict = dspy.Predict(_signature(mode))
        if not isinstance(examples, str | Path):
            examples = list(examples)
        if isinstance(examples, str | Path) or any(not isinstance(e, dspy.Example) for e in examples):
            examples = judge_examples(examples, rubric=self.rubric, mode=mode)
        self.predict.demos = list(examples)

    def __repr__(self) -> str:
        return f"LLMJudge(mode={self.mode!r}, rubric={self.rubric[:40]!r}, demos={len(self.predict.demos)})"

    def _demos(self, inputs: Mapping[str, str]) -> list[dspy.Example] | None:
        """This call's demos from the demo source, or None for the fixed ones."""
        if self.demo_source is None:
            return None
        try:
            rows = self.demo_source.judge_demos(validator=self.name, rubric=self.rubric,
                                                task_inputs=inputs["task_inputs"], candidate=inputs["candidate"],
                                                k=self.demo_k)
            return judge_examples(rows, rubric=self.rubric, mode=self.mode) or None
        except Exception as exc:  # a failing source must not stop grading: the fixed demos stand in
            logger.warning("judge %s: the demo source failed (%s: %s); using the fixed demos",
                           self.name, type(exc).__name__, exc)
            return None

    def _ask(self, inputs: dict[str, str], lm: Any, demos: list[dspy.Example] | None = None) -> pydantic.BaseModel:
        settings: dict[str, Any] = {"lm": lm, "trace": []}  # a fresh trace: the judge is not a pipeline step
        if self.adapter is not None:
            settings["adapter"] = self.adapter
        with dspy.context(**settings):
            answer = (self.predict(**inputs) if demos is None else self.predict(**inputs, demos=demos)).judgement
        model = _ANSWERS[self.mode]
        return model.model_validate(answer.model_dump() if isinstance(answer, pydantic.BaseModel) else answer)

    def _verdict(self, answer: pydantic.BaseModel, attempts: int) -> Verdict:
        details: dict[str, Any] = {"judge_attempts": attempts, "judge": self.name}
        if isinstance(answer, BinaryJudgement):
            details.update(judge_passed=answer.passed, judge_comment=answer.reason)
            if answer.passed:
                return Verdict.ok(**details)
            return Verdict.fail(f"the judge failed it: {answer.reason}", **details)
        details.update(judge_score=answer.score, judge_comment=answer.comment)
        passed = answer.score >= self.pass_score
        feedback = "" if answer.score >= 1.0 else f"the judge scored it {answer.score:.2f}: {answer.comment}"
        return Verdict(answer.score, passed, feedback, details)

    def __call__(self, output: Any, *, gold: Any = None, example: Any = None, prediction: Any = None,
                 node: Node | None = None, task_inputs: str | None = None, **_: Any) -> Verdict:
        """Grades ``output``; ``task_inputs`` (``name: value`` lines) overrides the inputs read from
        ``node``, ``example`` and ``prediction`` (a stored node call is graded on its own inputs)."""
        lm = self.lm or dspy.settings.lm
        if lm is None:
            return Verdict.abstain("the judge could not grade this output: no judge LM is configured.",
                                   judge_failures=1, judge_errors=["no LM"])
        inputs = {"rubric": self.rubric,
                  "task_inputs": task_inputs if task_inputs is not None else _task_inputs(node, example, prediction),
                  "candidate": "" if output is None else str(output),
                  "reference": "(none)" if gold in (None, "") else str(gold)}
        demos = self._demos(inputs)
        errors: list[str] = []
        for attempt in range(1, self.retries + 2):
            if errors:  # say what was wrong; a changed prompt also misses DSPy's cache
                inputs["rubric"] = (f"{self.rubric}\n\n(Your previous answer was rejected: {errors[-1]}. Answer "
                                    "again with every field filled in and valid.)")
            try:
                return self._verdict(self._ask(inputs, lm, demos), attempt)
            except LMConfigError:
                raise  # a key, model or server to fix: no output can be graded
            except (LMError, DSPyLMError) as exc:  # the judge LM did not answer (after its own retries)
                return Verdict.abstain(f"not graded: the judge LM did not answer ({_reason(exc)}).",
                                       lm_errors=1, judge_errors=[*errors, _reason(exc)])
            except Exception as exc:  # a malformed answer: asked again, then abstained
                errors.append(_reason(exc))
        return Verdict.abstain(f"the judge could not grade this output after {len(errors)} attempts "
                               f"(last: {errors[-1]}).", judge_failures=1, judge_errors=errors)
