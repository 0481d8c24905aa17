"""The one budget: counts every LM call on every thread, refuses a call before it would go over a
cap, prices calls from LiteLLM's offline map, and hands its counts on to an enclosing tracker."""

import dspy
import pytest

from experiments.evaluate import lm_usage
from optimizers import Budget, BudgetStop
from programs import ConfigError
from tests.fakes import fake_lm, triage_respond

Ask = dspy.Signature("message -> category")


def ask(n):
    for i in range(n):
        dspy.Predict(Ask)(message=f"message {i}")


def test_counts_calls_and_tokens_inside_track_only():
    lm, engine = fake_lm(lambda fields, inputs: {"category": "billing"})
    budget = Budget(max_lm_calls=10)
    with dspy.context(lm=lm.lm, adapter=lm.adapter):
        ask(1)  # outside: not counted
        with budget.track():
            ask(3)
    assert len(engine.requests) == 4
    assert budget.calls == 3 and budget.tokens == 3 * 15 and budget.remaining_calls == 7
    assert budget.cost == 0.0 and budget.as_dict()["lm_calls"] == 3


def test_refuses_the_call_that_would_exceed_the_cap():
    lm, engine = fake_lm(lambda fields, inputs: {"category": "billing"})
    budget = Budget(max_lm_calls=3)
    with dspy.context(lm=lm.lm, adapter=lm.adapter), budget.track(), pytest.raises(BudgetStop, match="3/3 LM calls"):
        ask(5)
    assert len(engine.requests) == 3 and budget.calls == 3 and budget.refused == 1
    assert budget.exhausted and not budget.affords(1)


@pytest.mark.parametrize("threads", [1, 4])
def test_never_over_the_cap_inside_a_threaded_evaluation(threads):
    lm, engine = fake_lm(triage_respond)
    examples = [dspy.Example(message=f"parcel {i}", category="shipping").with_inputs("message") for i in range(12)]
    budget = Budget(max_lm_calls=7)
    evaluate = dspy.Evaluate(devset=examples, metric=lambda e, p, t=None: 1.0, num_threads=threads,
                             display_progress=False, max_errors=100)
    with dspy.context(lm=lm.lm, adapter=lm.adapter), budget.track(), pytest.raises(BudgetStop):
        evaluate(dspy.Predict(Ask))
    assert len(engine.requests) <= 7  # never over the cap
    if threads == 1:
        assert len(engine.requests) == budget.calls == 7
    else:  # a call still in flight on another thread when the evaluation stopped may be charged late
        assert 7 - threads < budget.calls <= len(engine.requests)


def test_token_cap_judged_by_the_largest_call():
    lm, engine = fake_lm(lambda fields, inputs: {"category": "billing"})
    budget = Budget(max_tokens=40)  # each scripted call costs 15 tokens
    with dspy.context(lm=lm.lm, adapter=lm.adapter), budget.track(), pytest.raises(BudgetStop):
        ask(5)
    assert budget.tokens == 30 and len(engine.requests) == 2  # a third would make 45 > 40


def test_dollars_from_the_offline_price_map():
    budget = Budget(max_cost=0.001)
    budget._charge("gpt-4o-mini", {"prompt_tokens": 1000, "completion_tokens": 100})
    assert 0 < budget.cost < 0.001 and budget.affords(1)
    budget._charge("local/smollm2-135m-instruct", {"prompt_tokens": 10**6, "completion_tokens": 10**6})
    budget._charge("someone/unlisted-model-xyz", {"prompt_tokens": 10, "completion_tokens": 10})
    assert budget.unpriced == {"someone/unlisted-model-xyz"}
    for _ in range(20):
        budget._charge("gpt-4o-mini", {"prompt_tokens": 1000, "completion_tokens": 100})
    assert not budget.affords(1) and "no price for someone/unlisted-model-xyz" in budget.describe()


def test_an_enclosing_tracker_still_sees_every_call():
    lm, _ = fake_lm(lambda fields, inputs: {"category": "billing"})
    budget = Budget(max_lm_calls=10)
    with dspy.context(lm=lm.lm, adapter=lm.adapter), lm_usage() as usage:
        with budget.track():
            ask(2)
        ask(1)
    assert budget.calls == 2 and usage.calls == 3


@pytest.mark.parametrize("bad", [{"max_lm_calls": -1}, {"max_tokens": "many"}, {"max_cost": -0.5}])
def test_bad_caps_are_config_errors(bad):
    with pytest.raises(ConfigError, match=f"--param {next(iter(bad))}"):
        Budget(**bad)


def test_a_nested_track_counts_each_call_once():
    lm, _ = fake_lm(lambda fields, inputs: {"category": "billing"})
    budget = Budget(max_lm_calls=10)
    with dspy.context(lm=lm.lm, adapter=lm.adapter), lm_usage() as usage:
        with budget.track():
            ask(1)
            with budget.track():
                ask(2)
    assert budget.calls == usage.calls == 3
