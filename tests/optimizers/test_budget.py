"""The one budget: counts every LM call on every thread, refuses a call before it would go over a
cap, prices calls from LiteLLM's offline map, and hands its counts on to an enclosing tracker."""

import json
import math

import dspy
import pytest
from dspy.lm15 import Message, Response, TextPart, Usage

from experiments.evaluate import lm_usage
from optimizers import Budget, BudgetStop
from programs import ConfigError
from tests.fakes import ScriptedEngine, fake_lm, triage_respond
from tests.optimizers.scripted import system_text, text

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


class SizedEngine(ScriptedEngine):
    """Reports usage the way a provider counts it: 4 prompt bytes a token plus 3 tokens a message,
    and the answer's bytes over 4, cut at the request's max_tokens. ``answers`` scripts the
    answer text per call (cycled)."""

    def __init__(self, answers=("billing",)):
        super().__init__(lambda fields, inputs: {})
        self.answers, self.reported = list(answers), []

    def complete(self, request):
        with self.lock:
            self.requests.append(request)
            answer = self.answers[(len(self.requests) - 1) % len(self.answers)]
        texts = [system_text(request)] + [text(m) for m in request.messages]
        prompt = sum(math.ceil(len(t.encode("utf-8")) / 4) + 3 for t in texts)
        body = json.dumps({"category": answer}, ensure_ascii=False)
        completion = math.ceil(len(body.encode("utf-8")) / 4)
        if request.config.max_tokens:
            completion = min(completion, request.config.max_tokens)
        with self.lock:
            self.reported.append((prompt, completion))
        return Response(id=None, model="fake/sized", message=Message.assistant([TextPart(body)]),
                        finish_reason="stop", usage=Usage(input_tokens=prompt, output_tokens=completion,
                                                          total_tokens=prompt + completion))

    @property
    def spent(self):
        return sum(p + c for p, c in self.reported)


def sized_lm(model="fake/sized", answers=("billing",), **kwargs):
    engine = SizedEngine(answers)
    return dspy.LM(model, engine=engine, cache=False, temperature=0.0, **kwargs), engine


def ask_each(messages):
    for message in messages:
        dspy.Predict(Ask)(message=message)


def test_the_first_call_is_refused_when_its_prompt_could_cross_the_token_cap():
    lm, engine = sized_lm()
    budget = Budget(max_tokens=100)  # the prompt is ~600 bytes: before an answer, up to 600 tokens
    with dspy.context(lm=lm, adapter=dspy.JSONAdapter()), budget.track(), pytest.raises(BudgetStop,
                                                                                     match="could take up to"):
        ask(1)
    assert engine.requests == [] and budget.refused == 1 and budget.tokens == 0


def test_a_prompt_larger_than_any_before_is_refused_before_it_crosses_the_token_cap():
    """Judging by the largest call so far would let the long prompt through and cross the cap."""
    lm, engine = sized_lm()
    short, long = "parcel", "where is my parcel " * 60
    probe = Budget()
    with dspy.context(lm=lm, adapter=dspy.JSONAdapter()), probe.track():
        ask_each([short])
    one_short = engine.spent
    engine.reported.clear()
    budget = Budget(max_tokens=3 * one_short + 200)  # three short calls fit, the long one does not
    with dspy.context(lm=lm, adapter=dspy.JSONAdapter()), budget.track(), pytest.raises(BudgetStop):
        ask_each([short, short, long, short])
    assert len(engine.reported) == 2 and engine.spent == budget.tokens <= budget.max_tokens
    assert budget.tokens + engine.reported[0][0] * 2 > budget.max_tokens - 200  # not refused for want of room
    assert budget.overshoot == {"tokens": 0, "cost": 0.0}


@pytest.mark.parametrize("threads", [1, 4])
def test_the_token_cap_holds_inside_a_threaded_evaluation(threads):
    """Prompts of many lengths (Japanese among them) on 4 threads: what the provider counted never
    crosses the cap, and the budget stops close to it, not at the first reservation."""
    lm, engine = sized_lm(answers=("billing", "shipping", "返金"), max_tokens=12)
    messages = [("荷物が届きません。" * (i % 5 + 1)) if i % 3 == 0 else "parcel " * (i % 7 + 1) for i in range(40)]
    examples = [dspy.Example(message=m, category="shipping").with_inputs("message") for m in messages]
    budget = Budget(max_tokens=2500)
    evaluate = dspy.Evaluate(devset=examples, metric=lambda e, p, t=None: 1.0, num_threads=threads,
                             display_progress=False, max_errors=100)
    with dspy.context(lm=lm, adapter=dspy.JSONAdapter()), budget.track(), pytest.raises(BudgetStop):
        evaluate(dspy.Predict(Ask))
    assert engine.spent <= 2500 and budget.tokens <= 2500 and budget.overshoot["tokens"] == 0
    largest = max(p + c for p, c in engine.reported)
    assert engine.spent > 2500 - 3 * largest  # stopped near the cap
    assert max(c for _, c in engine.reported) <= 12


def test_the_lms_max_tokens_bounds_the_completion_it_reserves():
    lm, engine = sized_lm(max_tokens=5000)
    budget = Budget(max_tokens=3000)  # the prompt fits, a 5000-token completion would not
    with dspy.context(lm=lm, adapter=dspy.JSONAdapter()), budget.track(), pytest.raises(BudgetStop):
        ask(1)
    assert engine.requests == []
    prompt = [{"role": "user", "content": "東京" * 10}]
    assert budget.estimate("fake/sized", {"messages": prompt}, lm) == (60 + 8 + 5000, 0.0)


def test_without_max_tokens_a_longer_completion_than_any_before_can_cross_by_its_excess():
    """The documented limit: the completion is judged by the longest so far when the LM has no
    max_tokens. The crossing is that call's excess, it shows in overshoot, and the next call is refused."""
    lm, engine = sized_lm(answers=("billing", "billing", "billing", "x" * 400))
    probe = Budget()
    with dspy.context(lm=lm, adapter=dspy.JSONAdapter()), probe.track():
        ask(2)
    per_call = engine.spent // 2
    engine.reported.clear()
    engine.requests.clear()
    budget = Budget(max_tokens=4 * per_call + 30)  # four short calls fit (the first reserves ~4x its tokens)
    with dspy.context(lm=lm, adapter=dspy.JSONAdapter()), budget.track(), pytest.raises(BudgetStop):
        ask(6)
    assert len(engine.reported) == 4 and budget.tokens == engine.spent > budget.max_tokens
    excess = engine.reported[3][1] - engine.reported[0][1]
    assert 0 < budget.overshoot["tokens"] <= excess
    assert budget.as_dict()["overshoot_tokens"] == budget.overshoot["tokens"]


def test_the_dollar_cap_holds_with_the_providers_price_on_threads():
    from optimizers.budget import _price

    lm, engine = sized_lm(model="openai/gpt-4o-mini", max_tokens=12)
    examples = [dspy.Example(message="parcel " * (i % 6 + 1), category="shipping").with_inputs("message")
                for i in range(30)]
    one = _price("openai/gpt-4o-mini", 200, 12)
    cap = round(6.5 * one, 8)
    budget = Budget(max_cost=cap)
    evaluate = dspy.Evaluate(devset=examples, metric=lambda e, p, t=None: 1.0, num_threads=4,
                             display_progress=False, max_errors=100)
    with dspy.context(lm=lm, adapter=dspy.JSONAdapter()), budget.track(), pytest.raises(BudgetStop):
        evaluate(dspy.Predict(Ask))
    billed = sum(_price("openai/gpt-4o-mini", p, c) for p, c in engine.reported)
    assert 0 < billed <= cap and budget.cost == pytest.approx(billed) and budget.overshoot["cost"] == 0
    assert budget.unpriced == set()


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


def test_nested_budgets_both_count_and_a_refusal_by_the_inner_leaves_nothing_held_by_the_outer():
    lm, engine = sized_lm()
    outer, inner = Budget(max_lm_calls=10, max_tokens=10**6), Budget(max_lm_calls=2)
    with dspy.context(lm=lm, adapter=dspy.JSONAdapter()), outer.track():
        with inner.track(), pytest.raises(BudgetStop, match="2/2 LM calls"):
            ask(5)
        assert (outer.calls, inner.calls, outer.refused, inner.refused) == (2, 2, 0, 1)
        assert outer._in_flight == 0 and outer._reserved_tokens == 0 and outer._open == {}
        ask(3)  # the outer budget alone, on the same thread: nothing left waiting or held
        with outer.track():  # re-entered: still one count per call
            ask(1)
    assert outer.calls == len(engine.requests) == 6 and outer.tokens == engine.spent
