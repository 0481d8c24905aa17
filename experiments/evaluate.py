"""Running a program over examples: per-example node verdicts, per-node scores, LM usage."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import dspy
from dspy.utils.usage_tracker import UsageTracker

from experiments.runner import Trace, program_version, run_traced
from metrics.pipeline_metric import PipelineMetric
from metrics.verdict import Verdict
from programs.errors import LMError, UserError

__all__ = ["EvalReport", "ExampleResult", "LMUsage", "evaluate_program", "lm_error_budget", "lm_usage"]


@dataclass
class LMUsage:
    """LM calls that reached a model (cache hits excluded) and their tokens."""

    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def as_dict(self) -> dict[str, int]:
        return {"calls": self.calls, "tokens": self.tokens, "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens}


class SharedUsageTracker(UsageTracker):
    """A usage tracker every worker thread writes to.

    DSPy's ParallelExecutor deep-copies the tracker into each worker (to attribute usage per
    example), so a plain tracker never sees the calls made on worker threads. This one survives
    the copy as itself, and a lock keeps concurrent appends whole.
    """

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()

    def __deepcopy__(self, memo: dict) -> SharedUsageTracker:
        return self

    def add_usage(self, lm: str, usage_entry: dict[str, Any]) -> None:
        with self._lock:
            super().add_usage(lm, usage_entry)


@contextmanager
def lm_usage() -> Iterator[LMUsage]:
    """Counts LM calls and tokens inside the block, on every thread DSPy runs it on.

    DSPy records one usage entry per call that reached a model and none for cache hits; a
    tracker already in force (an enclosing block) receives the same entries on exit.
    """
    usage = LMUsage()
    tracker = SharedUsageTracker()
    parent = dspy.settings.usage_tracker
    with dspy.context(usage_tracker=tracker):
        try:
            yield usage
        finally:
            for lm, entries in tracker.usage_data.items():
                if parent is not None:
                    parent.usage_data[lm].extend(entries)
                for entry in entries:
                    usage.calls += 1
                    usage.prompt_tokens += int(entry.get("prompt_tokens") or 0)
                    usage.completion_tokens += int(entry.get("completion_tokens") or 0)


@dataclass
class ExampleResult:
    """One example's outcome.

    Attributes:
        index: The example's position in the evaluated list.
        prediction: What the program returned (None when it raised).
        verdicts: One Verdict per node, for what each node produced.
        score: The weighted mean of the counted node scores.
        error: ``"TypeName: message"`` when the program raised.
        seconds: Wall time.
        trace: The run's trace: every node call, the error and its kind.
    """

    index: int
    prediction: Any
    verdicts: dict[str, Verdict]
    score: float
    error: str | None = None
    seconds: float = 0.0
    trace: Trace | None = None

    def node_output(self, node: str) -> Any:
        """What ``node`` produced on this example (its last call's output), None if it was not
        called or failed."""
        calls = [c for c in (self.trace.calls if self.trace is not None else ()) if c.node == node]
        return calls[-1].output if calls else None

    @property
    def lm_error(self) -> bool:
        """The LM did not answer: the example is an error, not a score."""
        return self.trace is not None and self.trace.error_kind == "lm"

    @property
    def counted(self) -> bool:
        """Whether the example's score counts in the mean: the LM answered and some node was judged."""
        return not self.lm_error and any(v.counted for v in self.verdicts.values())


@dataclass
class EvalReport:
    """An evaluation: the mean score, the mean per node, and every example's verdicts.

    Examples whose LM did not answer (``lm_errors``) and examples no check could judge are left
    out of every mean; they are counted, never scored 0.
    """

    results: list[ExampleResult]
    usage: LMUsage = field(default_factory=LMUsage)
    seconds: float = 0.0

    @property
    def score(self) -> float:
        counted = [r.score for r in self.results if r.counted]
        return sum(counted) / len(counted) if counted else 0.0

    @property
    def nodes(self) -> dict[str, float]:
        """Each node's mean score over the examples where it could be judged (see metrics.verdict)."""
        if not self.results:
            return {}
        means = {}
        for name in self.results[0].verdicts:
            scores = [r.verdicts[name].score for r in self.results
                      if not r.lm_error and r.verdicts[name].counted]
            means[name] = sum(scores) / len(scores) if scores else 0.0
        return means

    @property
    def judge_failures(self) -> int:
        """Outputs an LLM judge could not grade (left out of the means above)."""
        return sum(int(v.details.get("judge_failures", 0)) for r in self.results for v in r.verdicts.values())

    @property
    def errors(self) -> int:
        """Examples whose program raised (LM failures included)."""
        return sum(r.error is not None for r in self.results)

    @property
    def lm_errors(self) -> int:
        """Examples where an LM did not answer, the task LM's or a judge's: left out of the score."""
        judged = sum(int(v.details.get("lm_errors", 0)) > 0 and not r.lm_error
                     for r in self.results for v in r.verdicts.values())
        return sum(r.lm_error for r in self.results) + judged

    @property
    def scored(self) -> int:
        """Examples whose score counts in the mean."""
        return sum(r.counted for r in self.results)

    def metrics(self, stage: str) -> dict[str, float]:
        """The summary's figures as MLflow metrics named ``<stage>.<figure>`` and ``<stage>.node.<n>.score``."""
        summary = self.summary()
        keys = ("score", "lm_calls", "tokens", "errors", "lm_errors", "scored", "seconds")
        figures = {f"{stage}.{k}": summary[k] for k in keys}
        return {**figures, **{f"{stage}.node.{n}.score": s for n, s in summary["nodes"].items()}}

    def summary(self) -> dict[str, Any]:
        """The figures that go to the CLI's JSON and to MLflow."""
        return {"score": self.score, "nodes": self.nodes, "examples": len(self.results), "scored": self.scored,
                "errors": self.errors, "lm_errors": self.lm_errors, "judge_failures": self.judge_failures,
                "lm_calls": self.usage.calls, "tokens": self.usage.tokens, "seconds": self.seconds}


def lm_error_budget(examples: int) -> int:
    """How many examples may fail for the LM (after its retries) before an evaluation stops:
    10% of them, at least 2. Past it the LM is down, not flaky, and the run fails."""
    return max(2, math.ceil(0.1 * examples))


def evaluate_program(program: dspy.Module, examples: Sequence[dspy.Example], metric: PipelineMetric, *,
                     threads: int = 1, progress: bool = True, max_lm_errors: int | None = None,
                     pipeline_name: str = "") -> EvalReport:
    """Runs ``program`` on every example and judges what each node produced.

    A program that raises on an example scores 0 on it with the error as feedback, and the
    evaluation goes on, unless the LM did not answer: that example is an LM error, left out of
    the score. An LM configuration error (no key, unknown model) stops the evaluation at once;
    more LM errors than ``max_lm_errors`` (default :func:`lm_error_budget`) stop it too.

    Raises:
        LMError: The LM could not answer (a configuration error, or past the error budget).
    """
    budget = lm_error_budget(len(examples)) if max_lm_errors is None else max_lm_errors
    version = program_version(program)
    stop = threading.Event()
    lock = threading.Lock()
    fatal: list[BaseException] = []
    failures: list[str] = []

    def run_one(item: tuple[int, dspy.Example]) -> ExampleResult | None:
        index, example = item
        if stop.is_set():
            return None
        trace = run_traced(program, example.inputs(), pipeline_name=pipeline_name, version=version)
        try:
            verdicts = metric.judge_calls(example, trace.calls, failed=trace.prediction is None)
        except UserError as exc:  # a judge LM that cannot answer for configuration reasons
            with lock:
                fatal.append(exc)
            stop.set()
            return None
        if trace.error_kind == "lm":
            with lock:
                failures.append(trace.error or "")
                if isinstance(trace.exception, UserError) or len(failures) > budget:
                    fatal.append(trace.exception or LMError(trace.error or "the LM failed"))
                    stop.set()
        elif trace.error is not None:
            verdicts = {n: Verdict.fail(f"the pipeline raised {trace.error}") for n in verdicts}
        return ExampleResult(index, trace.prediction, verdicts, metric.score(verdicts), trace.error,
                             trace.seconds, trace)

    from dspy.utils.parallelizer import ParallelExecutor

    start = time.perf_counter()
    with lm_usage() as usage:
        executor = ParallelExecutor(num_threads=max(1, threads), disable_progress_bar=not progress,
                                    max_errors=len(examples) + 1)
        results = executor.execute(run_one, list(enumerate(examples)))
    if fatal:
        first = fatal[0]
        if isinstance(first, UserError) or len(failures) <= budget:
            raise first
        raise LMError(f"{len(failures)} of the {len(examples)} examples got no answer from the LM (more than the "
                      f"error budget of {budget}); the last: {failures[-1]}") from first
    return EvalReport([r for r in results if r is not None], usage, time.perf_counter() - start)
