"""Running a program over examples: per-example node verdicts, per-node scores, LM usage."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import dspy
from dspy.utils.usage_tracker import UsageTracker

from metrics.pipeline_metric import PipelineMetric
from metrics.verdict import Verdict

__all__ = ["EvalReport", "ExampleResult", "LMUsage", "evaluate_program", "lm_usage"]


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


class _SharedUsageTracker(UsageTracker):
    """A usage tracker every worker thread writes to.

    DSPy's ParallelExecutor deep-copies the tracker into each worker (to attribute usage per
    example), so a plain tracker never sees the calls made on worker threads. This one survives
    the copy as itself, and a lock keeps concurrent appends whole.
    """

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()

    def __deepcopy__(self, memo: dict) -> _SharedUsageTracker:
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
    tracker = _SharedUsageTracker()
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
    """One example's outcome."""

    index: int
    prediction: Any
    verdicts: dict[str, Verdict]
    score: float
    error: str | None = None
    seconds: float = 0.0


@dataclass
class EvalReport:
    """An evaluation: the mean score, the mean per node, and every example's verdicts."""

    results: list[ExampleResult]
    usage: LMUsage = field(default_factory=LMUsage)
    seconds: float = 0.0

    @property
    def score(self) -> float:
        return sum(r.score for r in self.results) / len(self.results) if self.results else 0.0

    @property
    def nodes(self) -> dict[str, float]:
        """Each node's mean score over the examples where it could be judged (see metrics.verdict)."""
        if not self.results:
            return {}
        means = {}
        for name in self.results[0].verdicts:
            scores = [r.verdicts[name].score for r in self.results if r.verdicts[name].counted]
            means[name] = sum(scores) / len(scores) if scores else 0.0
        return means

    @property
    def judge_failures(self) -> int:
        """Outputs an LLM judge could not grade (left out of the means above)."""
        return sum(int(v.details.get("judge_failures", 0)) for r in self.results for v in r.verdicts.values())

    @property
    def errors(self) -> int:
        return sum(r.error is not None for r in self.results)

    def metrics(self, stage: str) -> dict[str, float]:
        """The summary's figures as MLflow metrics named ``<stage>.<figure>`` and ``<stage>.node.<n>.score``."""
        summary = self.summary()
        figures = {f"{stage}.{k}": summary[k] for k in ("score", "lm_calls", "tokens", "errors", "seconds")}
        return {**figures, **{f"{stage}.node.{n}.score": s for n, s in summary["nodes"].items()}}

    def summary(self) -> dict[str, Any]:
        """The figures that go to the CLI's JSON and to MLflow."""
        return {"score": self.score, "nodes": self.nodes, "examples": len(self.results), "errors": self.errors,
                "judge_failures": self.judge_failures, "lm_calls": self.usage.calls, "tokens": self.usage.tokens,
                "seconds": self.seconds}


def evaluate_program(program: dspy.Module, examples: Sequence[dspy.Example], metric: PipelineMetric, *,
                     threads: int = 1, progress: bool = True) -> EvalReport:
    """Runs ``program`` on every example and judges each node.

    A program that raises on an example scores 0 on it with the error as feedback; evaluation
    goes on.
    """

    def run_one(item: tuple[int, dspy.Example]) -> ExampleResult:
        index, example = item
        start = time.perf_counter()
        try:
            prediction, error = program(**example.inputs()), None
        except Exception as exc:  # one failing example must not stop the evaluation
            prediction, error = None, f"{type(exc).__name__}: {exc}"
        seconds = time.perf_counter() - start
        verdicts = metric.judge(example, prediction)
        if error is not None:
            verdicts = {n: Verdict.fail(f"the pipeline raised {error}") for n in verdicts}
        return ExampleResult(index, prediction, verdicts, metric.score(verdicts), error, seconds)

    from dspy.utils.parallelizer import ParallelExecutor

    start = time.perf_counter()
    with lm_usage() as usage:
        executor = ParallelExecutor(num_threads=max(1, threads), disable_progress_bar=not progress,
                                    max_errors=len(examples) + 1)
        results = executor.execute(run_one, list(enumerate(examples)))
    return EvalReport(results, usage, time.perf_counter() - start)
