"""Keeping the LLM judge aligned with people: agreement, the judge's demos from human labels,
and compiling the judge on them.

- :data:`JUDGE_AGREEMENT_SQL`: the ``judge_agreement`` view. Per judge rubric (verdicts with
  source ``judge``; the validator is the rubric's name, ``metrics.rubric_id``) and per day of the
  human label: how many node calls both graded, the accuracy of the judge against the latest
  human label, and Cohen's kappa. The row with ``day`` NULL is all time.
- :class:`LabelledJudgeDemos`: a ``metrics.JudgeDemoSource`` over human-labelled node calls:
  the nearest by input (character-trigram cosine, which works for Japanese without a
  tokenizer), weighted by recency, disagreements with the judge first.
- :func:`align_judge`: compiles the judge (a DSPy module) on a seeded split of the human labels
  and reports accuracy and kappa before and after on the held-out labels.
"""

from __future__ import annotations

import copy
import json
import math
import random
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from programs.errors import ConfigError, UserError

__all__ = [
    "JUDGE_AGREEMENT_SQL",
    "PAIRS_CTE",
    "AlignOptions",
    "AlignResult",
    "LabelledExample",
    "LabelledJudgeDemos",
    "agreement",
    "align_judge",
    "attach_judge_demos",
    "cohen_kappa",
    "judge_agreement",
    "judge_alignment_metrics",
    "labelled_examples",
    "run_align",
    "split_labels",
    "task_inputs_text",
]

# The latest judge verdict per (node call, rubric), the latest human label per node call (with how
# many labels on that call say the same), and their pairs: same call, and the label answers that
# rubric or none in particular. The one definition of "the judge and a human disagree" (the review
# queue uses it too).
PAIRS_CTE = """
judge AS (
    SELECT * FROM verdicts
    WHERE source = 'judge' AND call_id IS NOT NULL AND coalesce(counted, TRUE)
    QUALIFY row_number() OVER (PARTITION BY call_id, validator ORDER BY created_at DESC, verdict_id) = 1),
human AS (
    SELECT *, count(*) OVER (PARTITION BY call_id, passed) AS same_opinion FROM labels
    WHERE call_id IS NOT NULL AND passed IS NOT NULL
    QUALIFY row_number() OVER (PARTITION BY call_id ORDER BY created_at DESC, label_id) = 1),
pairs AS (
    SELECT j.validator, j.call_id, j.trace_id, j.passed AS judge_passed, h.passed AS human_passed,
           h.score AS human_score, h.comment, h.reviewer, h.created_at AS labelled_at, h.same_opinion
    FROM judge j JOIN human h ON h.call_id = j.call_id AND (h.validator IS NULL OR h.validator = j.validator))
"""
_PAIRS_SQL = "WITH " + PAIRS_CTE

JUDGE_AGREEMENT_SQL = _PAIRS_SQL + """,
stats AS (
    SELECT validator, CAST(timezone('UTC', labelled_at) AS DATE) AS day, count(*) AS n,
           avg(CASE WHEN judge_passed = human_passed THEN 1.0 ELSE 0.0 END) AS accuracy,
           avg(CASE WHEN judge_passed THEN 1.0 ELSE 0.0 END) AS judge_pass_rate,
           avg(CASE WHEN human_passed THEN 1.0 ELSE 0.0 END) AS human_pass_rate
    FROM pairs GROUP BY GROUPING SETS ((validator, CAST(timezone('UTC', labelled_at) AS DATE)), (validator))),
chance AS (
    SELECT *, judge_pass_rate * human_pass_rate + (1 - judge_pass_rate) * (1 - human_pass_rate) AS expected
    FROM stats)
SELECT validator, day, n, accuracy,
       CASE WHEN expected < 1 THEN (accuracy - expected) / (1 - expected) END AS kappa,
       judge_pass_rate, human_pass_rate
FROM chance
"""
"""The body of the ``judge_agreement`` view (``CREATE VIEW judge_agreement AS`` + this)."""


def judge_agreement(store: Any, *, by_day: bool = False) -> list[dict[str, Any]]:
    """Per rubric: n, accuracy and Cohen's kappa of the judge against the latest human labels.

    Args:
        store: An open store (anything with ``query(sql, params)``).
        by_day: Per day of the human label too (``day`` set), besides the all-time rows.

    Returns:
        Rows ``{validator, day, n, accuracy, kappa, judge_pass_rate, human_pass_rate}``; kappa is
        None when it is undefined (judge and humans both gave one answer only).
    """
    where = "" if by_day else "WHERE day IS NULL"
    return store.query(f"SELECT * FROM ({JUDGE_AGREEMENT_SQL}) {where} ORDER BY validator, day NULLS FIRST", [])


def cohen_kappa(pairs: Iterable[tuple[bool, bool]]) -> float | None:
    """Cohen's kappa of two binary raters; None when undefined (no pairs, or chance agreement 1)."""
    pairs = [(bool(a), bool(b)) for a, b in pairs]
    if not pairs:
        return None
    n = len(pairs)
    observed = sum(a == b for a, b in pairs) / n
    pa, pb = sum(a for a, _ in pairs) / n, sum(b for _, b in pairs) / n
    expected = pa * pb + (1 - pa) * (1 - pb)
    return None if expected >= 1 else (observed - expected) / (1 - expected)


def agreement(pairs: Sequence[tuple[bool, bool]]) -> dict[str, Any]:
    """``{n, accuracy, kappa}`` of (judge, human) pass/fail pairs."""
    n = len(pairs)
    return {"n": n, "accuracy": (sum(a == b for a, b in pairs) / n) if n else None, "kappa": cohen_kappa(pairs)}


def task_inputs_text(inputs: Any) -> str:
    """A node call's inputs as the judge sees them: ``name: value`` lines."""
    if isinstance(inputs, str):
        try:
            inputs = json.loads(inputs)
        except json.JSONDecodeError:
            return inputs
    if isinstance(inputs, Mapping):
        return "\n".join(f"{k}: {v}" for k, v in inputs.items() if v is not None) or "(none)"
    return "(none)" if inputs is None else str(inputs)


@dataclass(frozen=True)
class LabelledExample:
    """A node call a human labelled for one rubric, with what the judge said about it."""

    call_id: str
    validator: str
    task_inputs: str
    candidate: str
    passed: bool
    score: int | None
    comment: str
    created_at: datetime
    judge_passed: bool | None = None

    @property
    def disagreement(self) -> bool:
        return self.judge_passed is not None and self.judge_passed != self.passed

    def row(self, mode: str) -> dict[str, Any]:
        """The example in ``metrics.judge_examples``' row format."""
        comment = self.comment or ("The output meets the rubric." if self.passed else "The output fails the rubric.")
        row: dict[str, Any] = {"candidate": self.candidate, "task_inputs": self.task_inputs, "comment": comment,
                               "passed": self.passed}
        if mode == "score":
            row["score"] = (self.score - 1) / 4 if self.score is not None else (1.0 if self.passed else 0.0)
        return row


_LABELLED_SQL = _PAIRS_SQL + """
SELECT p.call_id, p.validator, c.inputs, c.outputs, c.output_field, p.human_passed AS passed,
       p.human_score AS score, p.comment, p.labelled_at AS created_at, p.judge_passed
FROM pairs p JOIN node_calls c ON c.call_id = p.call_id
WHERE p.validator = ?
ORDER BY p.labelled_at, p.call_id
"""


def labelled_examples(store: Any, validator: str) -> list[LabelledExample]:
    """The node calls graded by judge rubric ``validator`` that a human labelled (the latest
    label per call), oldest first. The candidate is what the node produced."""
    out = []
    for r in store.query(_LABELLED_SQL, [validator]):
        outputs = json.loads(r["outputs"]) if isinstance(r["outputs"], str) else (r["outputs"] or {})
        candidate = outputs.get(r["output_field"]) if isinstance(outputs, Mapping) else outputs
        out.append(LabelledExample(call_id=r["call_id"], validator=r["validator"],
                                   task_inputs=task_inputs_text(r["inputs"]),
                                   candidate="" if candidate is None else str(candidate), passed=bool(r["passed"]),
                                   score=r["score"], comment=r["comment"] or "", created_at=r["created_at"],
                                   judge_passed=r["judge_passed"]))
    return out


_FIELD_NAME = re.compile(r"^\w+: ", re.M)


def _trigrams(text: str) -> Counter[str]:
    # The values only: the field names are the same in every example and would make all look alike.
    text = " ".join(_FIELD_NAME.sub("", text).lower().split())
    return Counter(text[i:i + 3] for i in range(max(1, len(text) - 2)))


def _cosine(a: Counter[str], b: Counter[str]) -> float:
    dot = sum(v * b.get(k, 0) for k, v in a.items())
    norm = math.sqrt(sum(v * v for v in a.values())) * math.sqrt(sum(v * v for v in b.values()))
    return dot / norm if norm else 0.0


@dataclass
class LabelledJudgeDemos:
    """Chooses a judge's demos per call from human-labelled examples (a ``metrics.JudgeDemoSource``).

    Each labelled example is scored by the cosine similarity of its inputs to the call's inputs
    (character trigrams), times a recency weight ``0.5 ** (age_days / half_life_days)`` floored
    at ``min_recency``. Of the ``3k`` best, the ones where the judge disagreed with the human
    come first (the cases the judge gets wrong are the ones worth showing it), then the rest by
    score; ``k`` are returned.

    Args:
        examples: ``examples(validator)`` -> the labelled examples of that rubric; for the store,
            ``lambda v: labelled_examples(store, v)`` (read on every call, so a label saved a
            moment ago is used by the very next grading).
        half_life_days: Recency half-life.
        min_recency: The weight an old example keeps (similar old cases still count).
        now: The clock (tests fix it).
    """

    examples: Callable[[str], Sequence[LabelledExample]]
    mode: str = "binary"
    half_life_days: float = 30.0
    min_recency: float = 0.25
    now: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))

    @classmethod
    def over_store(cls, store: Any, *, mode: str = "binary", **settings: Any) -> LabelledJudgeDemos:
        """The demo source over an open store's human labels."""
        return cls(lambda validator: labelled_examples(store, validator), mode=mode, **settings)

    def ranked(self, validator: str, task_inputs: str, k: int) -> list[LabelledExample]:
        query = _trigrams(task_inputs)
        now = self.now()
        scored = []
        for ex in self.examples(validator):
            created = ex.created_at if ex.created_at.tzinfo else ex.created_at.replace(tzinfo=UTC)
            age_days = max(0.0, (now - created).total_seconds() / 86400)
            recency = max(self.min_recency, 0.5 ** (age_days / self.half_life_days))
            scored.append((_cosine(query, _trigrams(ex.task_inputs)) * recency, ex))
        scored.sort(key=lambda pair: (-pair[0], pair[1].call_id))
        shortlist = scored[: 3 * k]
        shortlist.sort(key=lambda pair: (not pair[1].disagreement, -pair[0], pair[1].call_id))
        return [ex for _, ex in shortlist[:k]]

    def judge_demos(self, *, validator: str, rubric: str, task_inputs: str, candidate: str,
                    k: int) -> list[dict[str, Any]]:
        return [ex.row(self.mode) for ex in self.ranked(validator, task_inputs, k)]


def attach_judge_demos(metric: Any, source: Any, *, k: int = 4) -> int:
    """Gives every LLM judge of a ``metrics.PipelineMetric`` the demo source ``source``.

    Returns:
        How many judges got it.
    """
    from metrics.judge import LLMJudge

    count = 0
    for validators in getattr(metric, "validators", {}).values():
        for validator in validators:
            if isinstance(validator, LLMJudge):
                validator.demo_source, validator.demo_k = source, k
                count += 1
    return count


# ---------------------------------------------------------------------------------------------
# pipec judge align


@dataclass
class AlignResult:
    """What ``pipec judge align`` measured."""

    validator: str
    optimizer: str
    seed: int
    n_train: int
    n_test: int
    before: dict[str, Any]
    after: dict[str, Any]
    demos: list[dict[str, Any]]

    def as_dict(self) -> dict[str, Any]:
        return {"validator": self.validator, "optimizer": self.optimizer, "seed": self.seed,
                "n_train": self.n_train, "n_test": self.n_test, "before": self.before, "after": self.after,
                "demos": len(self.demos)}


def split_labels(examples: Sequence[LabelledExample], *, seed: int,
                 test_fraction: float = 0.4) -> tuple[list[LabelledExample], list[LabelledExample]]:
    """A seeded train/held-out split (by node call, so no call is on both sides)."""
    ordered = sorted(examples, key=lambda ex: ex.call_id)
    random.Random(seed).shuffle(ordered)
    n_test = min(len(ordered) - 1, max(1, round(len(ordered) * test_fraction)))
    return ordered[n_test:], ordered[:n_test]


def _judge_passed(judge: Any, ex: LabelledExample) -> bool | None:
    verdict = judge(ex.candidate, example=None, prediction=None, node=None, task_inputs=ex.task_inputs)
    return verdict.passed if verdict.counted else None


def _graded(judge: Any, examples: Sequence[LabelledExample]) -> dict[str, Any]:
    pairs, ungraded = [], 0
    for ex in examples:
        passed = _judge_passed(judge, ex)
        if passed is None:
            ungraded += 1
        else:
            pairs.append((passed, ex.passed))
    return {**agreement(pairs), "ungraded": ungraded}


def _trainset(judge: Any, examples: Sequence[LabelledExample]) -> list[Any]:
    from metrics.judge import judge_examples

    demos = judge_examples([ex.row(judge.mode) for ex in examples], rubric=judge.rubric, mode=judge.mode)
    return [d.with_inputs("rubric", "task_inputs", "candidate", "reference") for d in demos]


def _agrees(judge: Any) -> Callable[..., bool]:
    def metric(example: Any, prediction: Any, trace: Any = None, *_: Any) -> bool:
        answer, gold = prediction.judgement, example.judgement

        def passed(a: Any) -> bool:
            return bool(a.passed) if hasattr(a, "passed") else float(a.score) >= judge.pass_score

        try:
            return passed(answer) == passed(gold)
        except (AttributeError, TypeError, ValueError):
            return False

    return metric


def _compiled_predict(judge: Any, predict: Any, train: Sequence[LabelledExample], optimizer: str,
                      params: Mapping[str, Any], seed: int) -> Any:
    """The judge's ``dspy.Predict`` compiled by a registry optimizer on the training labels."""
    import dspy

    from optimizers.registry import prepare_optimizer

    class JudgeModule(dspy.Module):  # the judge as a one-predictor DSPy program
        def __init__(self, predict: Any) -> None:
            super().__init__()
            self.predict = predict

        def forward(self, **inputs: Any) -> Any:
            return self.predict(**inputs)

    lm = judge.lm or dspy.settings.lm
    prepared = prepare_optimizer(optimizer, _agrees(judge), params, seed=seed, lm=lm)
    settings: dict[str, Any] = {"lm": lm} if judge.adapter is None else {"lm": lm, "adapter": judge.adapter}
    try:
        with dspy.context(**settings):
            compiled = prepared.teleprompter.compile(JudgeModule(predict), trainset=_trainset(judge, train),
                                                     **prepared.compile_kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"optimizer {optimizer!r} could not compile the judge: {exc}") from exc
    return compiled.predict


def align_judge(judge: Any, examples: Sequence[LabelledExample], *, optimizer: str = "labeled",
                params: Mapping[str, Any] | None = None, seed: int = 0, test_fraction: float = 0.4,
                demos_k: int = 4) -> tuple[AlignResult, Any]:
    """Compiles ``judge`` (a ``metrics.LLMJudge``) on human labels and measures it on held-out ones.

    Args:
        judge: The judge as the pipeline declares it (its LM set, or the one in force).
        examples: The human-labelled examples of its rubric (:func:`labelled_examples`).
        optimizer: A DSPy/pipec optimizer from ``optimizers.registry`` (``labeled``,
            ``bootstrap``, ...) run on the judge's DSPy module, or ``dynamic``: per-call demos
            from the training labels (:class:`LabelledJudgeDemos`).
        params: Optimizer settings.
        seed: The split's (and optimizer's) seed.
        test_fraction: The share of labels held out.
        demos_k: Demos per call for ``dynamic``.

    Returns:
        The result and the aligned judge (a copy; ``judge`` is unchanged).

    Raises:
        UserError: Fewer than 4 labelled examples, or an unknown optimizer.
    """

    if len(examples) < 4:
        raise UserError(f"judge {judge.name} has {len(examples)} human-labelled node calls; label at least 4 "
                        "with pipec review first")
    train, test = split_labels(examples, seed=seed, test_fraction=test_fraction)
    before = _graded(judge, test)
    aligned = copy.copy(judge)
    aligned.predict = copy.deepcopy(judge.predict)
    if optimizer == "dynamic":
        pool = list(train)
        aligned.demo_source = LabelledJudgeDemos(lambda _v: pool, mode=judge.mode)
        aligned.demo_k = demos_k
        demos = [ex.row(judge.mode) for ex in pool]
    else:
        aligned.predict = _compiled_predict(judge, aligned.predict, train, optimizer, params or {}, seed)
        demos = [dict(d) for d in aligned.predict.demos]
    after = _graded(aligned, test)
    return AlignResult(validator=judge.name, optimizer=optimizer, seed=seed, n_train=len(train), n_test=len(test),
                       before=before, after=after, demos=demos), aligned


@dataclass
class AlignOptions:
    """The settings of ``pipec judge align`` (see its ``--help``)."""

    store: Any
    rubric: str | None = None
    pipeline: str | None = None
    optimizer: str = "labeled"
    params: Sequence[str] = ()
    seed: int = 0
    holdout: float = 0.4
    judge_lm: str | None = None
    api_base: str | None = None
    out: str | None = None


def _demo_row(demo: Any) -> dict[str, Any]:
    answer = demo.get("judgement") if hasattr(demo, "get") else None
    answer = answer.model_dump() if hasattr(answer, "model_dump") else dict(answer or {})
    row = {"candidate": demo.get("candidate"), "task_inputs": demo.get("task_inputs"),
           "reference": demo.get("reference")}
    if "passed" in answer:
        row.update(passed=answer["passed"], comment=answer.get("reason"))
    else:
        row.update(score=answer.get("score"), comment=answer.get("comment"))
    return row


def _choose_rubric(store: Any, rubric: str | None) -> tuple[str, list[str]]:
    rows = store.query(_PAIRS_SQL + " SELECT validator, count(*) AS n FROM pairs GROUP BY validator "
                                    "ORDER BY validator", [])
    labelled = [r["validator"] for r in rows]
    if rubric:
        if rubric not in labelled:
            raise UserError(f"--rubric {rubric}: no human labels on its verdicts; rubrics with labels: "
                            f"{', '.join(labelled) or 'none (review some with pipec review)'}")
    elif len(labelled) == 1:
        rubric = labelled[0]
    else:
        raise UserError("give --rubric: " + (f"several judge rubrics have human labels: {', '.join(labelled)}"
                                             if labelled else "no judge verdict has a human label yet; review "
                                             "some with pipec review"))
    pipelines = [r["pipeline"] for r in store.query(
        "SELECT DISTINCT t.pipeline FROM verdicts v JOIN traces t ON t.trace_id = v.trace_id "
        "WHERE v.source = 'judge' AND v.validator = ? AND t.pipeline IS NOT NULL ORDER BY 1", [rubric])]
    return rubric, pipelines


def run_align(opts: AlignOptions, *, say: Callable[[str], None] = lambda _m: None) -> dict[str, Any]:
    """``pipec judge align``: reads the labels (the store is closed again before any LM call),
    finds the judge in its pipeline, aligns it and reports kappa before and after."""
    from experiments.lm import make_lm
    from experiments.store import Store
    from metrics.judge import LLMJudge
    from metrics.pipeline_metric import PipelineMetric
    from optimizers.params import parse_params
    from programs.loader import make_pipeline

    params = parse_params(opts.params)
    with Store.open(opts.store, read_only=True) as store:
        rubric, pipelines = _choose_rubric(store, opts.rubric)
        examples = labelled_examples(store, rubric)
    spec = opts.pipeline or (pipelines[0] if len(pipelines) == 1 else None)
    if spec is None:
        raise UserError(f"give --pipeline: the labelled traces of {rubric} come from "
                        f"{', '.join(pipelines) or 'no recorded pipeline'}")
    judge_lm = make_lm(opts.judge_lm, api_base=opts.api_base)
    metric = PipelineMetric(make_pipeline(spec), judge_lm=judge_lm)
    judges = [v for vs in metric.validators.values() for v in vs if isinstance(v, LLMJudge)]
    judge = next((j for j in judges if j.name == rubric), None)
    if judge is None:
        raise UserError(f"pipeline {spec} declares no judge {rubric} (its judges: "
                        f"{', '.join(j.name for j in judges) or 'none'}); give the --pipeline that does")
    say(f"aligning {rubric} on {len(examples)} human labels ({opts.optimizer}, seed {opts.seed}) …")
    result, aligned = align_judge(judge, examples, optimizer=opts.optimizer, params=params, seed=opts.seed,
                                  test_fraction=opts.holdout)
    payload = result.as_dict()
    if opts.out:
        from pathlib import Path

        rows = result.demos if opts.optimizer == "dynamic" else [_demo_row(d) for d in aligned.predict.demos]
        Path(opts.out).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        payload["out"] = str(opts.out)
    return payload


def judge_alignment_metrics(metric: Any, store: Any = None) -> dict[str, float]:
    """The agreement of a compile's LLM judges with human labels, as MLflow metrics.

    For each node whose validators include an LLM judge whose rubric has human labels in the
    store: ``judge_agreement.<node>.kappa``, ``.accuracy`` and ``.labels`` (all time). Nothing when
    the pipeline has no judge or no store exists; a busy or broken store is a warning, never a
    failed compile.

    Args:
        metric: The compile's ``metrics.PipelineMetric``.
        store: The store path (``$PIPEC_STORE`` / ``$PIPEC_HOME/store.duckdb`` when None).
    """
    import logging

    from metrics.judge import LLMJudge

    judges = {j.name: node for node, vs in getattr(metric, "validators", {}).items() for j in vs
              if isinstance(j, LLMJudge)}
    if not judges:
        return {}
    from experiments.store import Store, default_store_path

    path = default_store_path(store)
    if not path.is_file():
        return {}
    try:
        with Store.open(path, read_only=True) as opened:
            rows = judge_agreement(opened)
    except Exception as exc:  # telemetry: the compile goes on without these metrics
        logging.getLogger(__name__).warning("pipec: judge agreement not read from %s (%s: %s)", path,
                                            type(exc).__name__, exc)
        return {}
    out: dict[str, float] = {}
    for row in rows:
        node = judges.get(row["validator"])
        if node is None:
            continue
        out[f"judge_agreement.{node}.labels"] = float(row["n"])
        for key in ("accuracy", "kappa"):
            if row[key] is not None:
                out[f"judge_agreement.{node}.{key}"] = float(row[key])
    return out
