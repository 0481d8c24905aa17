"""Judge alignment: agreement and Cohen's kappa per rubric (the store view, pipec stats), the
judge's demos from human labels, and compiling the judge on held-out-checked labels."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import dspy
import pytest
from click.testing import CliRunner

from experiments.alignment import (
    LabelledExample,
    LabelledJudgeDemos,
    agreement,
    align_judge,
    cohen_kappa,
    judge_agreement,
    labelled_examples,
    split_labels,
)
from experiments.cli import cli
from experiments.recording import Recorder
from experiments.store import Store
from metrics.judge import LLMJudge
from programs.errors import UserError
from programs.nodes import Writer
from programs.pipeline import Pipeline
from tests.experiments.review_seed import RUBRIC, seed_store, write_replier
from tests.fakes import _text, fake_lm


def test_cohen_kappa_of_the_textbook_example():
    # 20 yes/yes, 5 yes/no, 10 no/yes, 15 no/no: observed 0.7, chance 0.5, kappa 0.4.
    pairs = [(True, True)] * 20 + [(True, False)] * 5 + [(False, True)] * 10 + [(False, False)] * 15
    assert cohen_kappa(pairs) == pytest.approx(0.4)
    assert agreement(pairs) == {"n": 50, "accuracy": pytest.approx(0.7), "kappa": pytest.approx(0.4)}
    assert cohen_kappa([(True, True), (True, True)]) is None  # one answer only: undefined, not 1
    assert cohen_kappa([]) is None
    assert cohen_kappa([(True, False), (False, True)]) == pytest.approx(-1.0)


def test_the_store_view_gives_accuracy_and_kappa_per_rubric_over_time(tmp_path):
    seeded = seed_store(tmp_path / "store.duckdb")
    with Store.open(seeded.path) as store:
        before = judge_agreement(store)
        # Two more labels, today: both agree with the judge (t09 failed, t02 passed).
        store.add_label("t09", call_id="t09/1", passed=False, validator=seeded.judge, reviewer="b")
        store.add_label("t02", call_id="t02/1", passed=True, reviewer="b")  # a label for no rubric in particular
        rows = judge_agreement(store, by_day=True)
        view = store.query("SELECT * FROM judge_agreement WHERE day IS NULL")
    assert [(r["n"], r["accuracy"], r["kappa"]) for r in before] == [(5, pytest.approx(0.4), pytest.approx(0.0))]
    total, seeded_day, today = rows
    assert total["day"] is None and total["validator"] == seeded.judge
    # 7 pairs: judge P F F P F F P, human P P P P P F P -> 4/7 agree; chance 22/49; kappa 6/27.
    assert (total["n"], total["accuracy"], total["kappa"]) == (7, pytest.approx(4 / 7), pytest.approx(6 / 27))
    assert total["kappa"] == pytest.approx(cohen_kappa(
        [(False, True)] * 3 + [(True, True)] * 3 + [(False, False)]))
    assert (seeded_day["n"], seeded_day["kappa"]) == (5, pytest.approx(0.0))
    assert (today["n"], today["accuracy"], today["kappa"]) == (2, 1.0, pytest.approx(1.0))
    assert view[0]["kappa"] == pytest.approx(6 / 27)


def test_pipec_stats_json_reports_accuracy_and_kappa_per_rubric(tmp_path):
    seeded = seed_store(tmp_path / "store.duckdb")
    result = CliRunner().invoke(cli, ["stats", "--store", str(seeded.path), "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["judge_agreement"]
    overall = [r for r in rows if r["day"] is None]
    assert overall == [{"validator": seeded.judge, "day": None, "n": 5, "accuracy": pytest.approx(0.4),
                        "kappa": pytest.approx(0.0), "judge_pass_rate": pytest.approx(0.4),
                        "human_pass_rate": 1.0}]


NOW = datetime(2026, 11, 25, tzinfo=UTC)


def _example(call_id, inputs, passed, *, days_old=0.0, judge_passed=None):
    return LabelledExample(call_id=call_id, validator="judge:x", task_inputs=inputs, candidate=f"out {call_id}",
                           passed=passed, score=None, comment=f"because {call_id}",
                           created_at=NOW - timedelta(days=days_old), judge_passed=judge_passed)


def test_demos_are_the_nearest_by_input_recent_ones_weigh_more_and_disagreements_come_first():
    pool = [
        _example("near-old", "message: 注文した商品がまだ届きません", True, days_old=120),
        _example("near-new", "message: 注文した商品がまだ届かない", True, days_old=1),
        _example("far", "message: How do I reset my password?", False, days_old=0),
        _example("near-disagree", "message: 商品がまだ届きません", False, days_old=10, judge_passed=True),
    ]
    source = LabelledJudgeDemos(lambda validator: pool if validator == "judge:x" else [], now=lambda: NOW)
    ranked = [ex.call_id for ex in source.ranked("judge:x", "message: 注文した商品がまだ届きません", 3)]
    assert ranked[0] == "near-disagree"  # a disagreement among the nearest goes first
    assert ranked[1:] == ["near-new", "near-old"]  # the old exact match weighs less than a fresh near one
    rows = source.judge_demos(validator="judge:x", rubric="r", task_inputs="message: 注文した商品がまだ届きません",
                              candidate="c", k=1)
    assert rows == [{"candidate": "out near-disagree", "task_inputs": "message: 商品がまだ届きません",
                     "comment": "because near-disagree", "passed": False}]
    assert source.judge_demos(validator="judge:y", rubric="r", task_inputs="x", candidate="c", k=2) == []


def _polite(fields, inputs):
    """A scripted judge: an output passes when it apologises (it ignores its demos)."""
    candidate = inputs.get("candidate", "")
    passed = "申し訳" in candidate or "sorry" in candidate.lower()
    return {"judgement": {"passed": passed, "reason": "apologises" if passed else "no apology"}}


def _fully_labelled(tmp_path):
    seeded = seed_store(tmp_path / "store.duckdb")
    with Store.open(seeded.path) as store:
        for i, passed in ((2, True), (4, False), (6, False), (8, True), (9, False)):
            store.add_label(f"t0{i}", call_id=f"t0{i}/1", passed=passed, validator=seeded.judge, reviewer="b",
                            comment=f"理由 {i}")
        return seeded, labelled_examples(store, seeded.judge)


@pytest.mark.parametrize("optimizer", ["labeled", "bootstrap", "dynamic"])
def test_align_measures_before_and_after_on_held_out_labels_only(tmp_path, optimizer):
    seeded, examples = _fully_labelled(tmp_path)
    assert len(examples) == 10 and all(ex.validator == seeded.judge for ex in examples)
    lm, engine = fake_lm(_polite)
    judge = LLMJudge(RUBRIC, lm=lm.lm, adapter=lm.adapter, mode="binary")
    assert judge.name == seeded.judge
    result, aligned = align_judge(judge, examples, optimizer=optimizer, seed=3)
    train, test = split_labels(examples, seed=3)
    assert (result.n_train, result.n_test) == (len(train), len(test)) == (6, 4)
    assert not {ex.call_id for ex in train} & {ex.call_id for ex in test}
    expected = agreement([(_polite((), {"candidate": ex.candidate})["judgement"]["passed"], ex.passed) for ex in test])
    assert {k: result.before[k] for k in ("n", "accuracy", "kappa")} == expected
    assert {k: result.after[k] for k in ("n", "accuracy", "kappa")} == expected  # this judge ignores demos
    # The aligned judge was shown training labels, never a held-out one; the original is unchanged.
    shown = "\n".join(_text(m.parts) for r in engine.requests[len(test):] for m in r.messages)
    assert any(ex.candidate in shown for ex in train)
    assert [shown.count(ex.candidate) for ex in test] == [1] * len(test)  # graded once each, never a demo
    assert judge.predict.demos == [] and judge.demo_source is None
    if optimizer == "dynamic":
        assert aligned.demo_source is not None and aligned.predict.demos == []
    else:  # DSPy's optimizers compiled the judge's predictor on the training labels
        assert 1 <= len(aligned.predict.demos) <= 8 if optimizer == "bootstrap" else len(aligned.predict.demos) == 6


def test_align_needs_enough_labels(tmp_path):
    lm, _ = fake_lm(_polite)
    judge = LLMJudge(RUBRIC, lm=lm.lm, adapter=lm.adapter, mode="binary")
    with pytest.raises(UserError, match="label at least 4"):
        align_judge(judge, [_example("a", "x", True)], optimizer="labeled")


class _Replier(Pipeline):
    inputs = ("message",)
    gold = {"reply": "reply"}

    def __init__(self) -> None:
        super().__init__()
        self.reply = Writer({"message": "a customer message"}, output="reply",
                            rules={"rubric": RUBRIC, "judge_mode": "binary"})

    def forward(self, message: str) -> dspy.Prediction:
        return dspy.Prediction(reply=self.reply(message=message).reply)


def _replies(fields, inputs):
    if "judgement" in fields:
        return {"judgement": {"passed": True, "reason": "fine"}}
    return {"reply": f"Thanks, we are looking at it: {inputs.get('message', '')[:20]}"}


def test_recorded_judges_take_their_demos_from_the_human_labels_nearest_the_call(tmp_path):
    lm, engine = fake_lm(_replies)
    path = tmp_path / "store.duckdb"
    with dspy.context(lm=lm.lm, adapter=lm.adapter), Recorder(_Replier(), store=path, pipeline="replier") as rec:
        first = rec.run(message="注文した荷物がまだ届きません、注文番号 100")
    with Store.open(path) as store:
        (verdict,) = store.query("SELECT * FROM verdicts WHERE source = 'judge'")
        assert verdict["validator"] == LLMJudge(RUBRIC).name  # the rubric's id names the judge's verdicts
        store.add_label(first.trace_id, call_id=verdict["call_id"], passed=False, validator=verdict["validator"],
                        reviewer="花子", comment="日付がないので不合格です")
    before = len(engine.requests)
    with dspy.context(lm=lm.lm, adapter=lm.adapter), Recorder(_Replier(), store=path, pipeline="replier") as rec:
        rec.run(message="注文した荷物がまだ届きません、注文番号 101")
    judge_prompts = ["\n".join(_text(m.parts) for m in r.messages) for r in engine.requests[before:]
                     if "rubric" in _text(r.messages[-1].parts)]
    assert len(judge_prompts) == 1
    assert "日付がないので不合格です" in judge_prompts[0]  # the human's label and reason, shown as a demo
    assert first.calls[0].output in judge_prompts[0]


def test_a_compile_whose_judge_has_human_labels_records_its_agreement(tmp_path):
    from mlflow.tracking import MlflowClient

    from experiments.compile import CompileOptions, compile_pipeline

    seeded = seed_store(tmp_path / "store.duckdb")
    spec = write_replier(tmp_path)
    rows = [{"message": f"注文 {i} の荷物が届きません", "reply": f"申し訳ありません。注文 {i} は明日届きます。"}
            for i in range(8)]
    trainset = tmp_path / "train.jsonl"
    trainset.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    lm, _ = fake_lm(_replies)
    result = compile_pipeline(CompileOptions(spec, "labeled", trainset=str(trainset), lm=lm,
                                             store=str(seeded.path), progress=False))
    metrics = MlflowClient().get_run(result["run_id"]).data.metrics
    assert metrics["judge_agreement.reply.labels"] == 5
    assert metrics["judge_agreement.reply.accuracy"] == pytest.approx(0.4)
    assert metrics["judge_agreement.reply.kappa"] == pytest.approx(0.0)
