"""Dollars per LM call from LiteLLM's bundled price map (experiments.cost)."""

import json
from importlib import resources

import dspy
import pytest

from experiments.cost import Cost, call_cost, track_cost, usage_cost
from experiments.evaluate import lm_usage
from tests.fakes import ScriptedEngine, triage_respond


def _listed_price(model):
    # The price map bundled inside the litellm package: the figures the cost must come from.
    table = json.loads(resources.files("litellm").joinpath("model_prices_and_context_window_backup.json")
                       .read_text(encoding="utf-8"))
    entry = table[model]
    return entry["input_cost_per_token"], entry["output_cost_per_token"]


def test_a_listed_model_costs_its_listed_price():
    prompt, completion = _listed_price("gpt-4o-mini")
    assert call_cost("openai/gpt-4o-mini", 1000, 100) == pytest.approx(1000 * prompt + 100 * completion)
    assert call_cost("openai/gpt-4o-mini", 1000, 100) > 0


def test_the_embedded_lm_is_free_and_an_unlisted_model_unknown():
    assert call_cost("local/smollm2-135m-instruct", 5000, 500) == 0.0
    assert call_cost("acme/no-such-model-xyz", 10, 10) is None
    cost = usage_cost({"local/smollm2-135m-instruct": [{"prompt_tokens": 9, "completion_tokens": 1}],
                       "acme/no-such-model-xyz": [{"prompt_tokens": 9, "completion_tokens": 1}]})
    assert cost.usd is None and cost.unpriced == {"acme/no-such-model-xyz"}
    assert (Cost(0.5) + Cost(0.25)).usd == pytest.approx(0.75)
    assert (Cost(0.5) + Cost(None, {"x"})).as_dict() == {"usd": None, "unpriced": ["x"]}


def test_track_cost_prices_calls_counted_inside_nested_counters():
    engine = ScriptedEngine(triage_respond)  # answers with 10 prompt and 5 completion tokens per call
    lm = dspy.LM("openai/gpt-4o-mini", engine=engine, cache=False)
    predict = dspy.Predict("message -> category")
    with dspy.context(lm=lm, adapter=dspy.JSONAdapter()), track_cost() as cost:
        with lm_usage() as usage:
            predict(message="where is my parcel")
        predict(message="refund please")
    assert usage.calls == 1 and len(engine.requests) == 2
    prompt, completion = _listed_price("gpt-4o-mini")
    assert cost.usd == pytest.approx(2 * (10 * prompt + 5 * completion))
    assert cost.unpriced == set()
