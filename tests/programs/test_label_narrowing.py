"""Classifier calls that use their retrieval: the vote, narrowed labels, label descriptions."""

import json

import dspy
import pytest

from experiments.evaluate import lm_usage
from programs import Classifier, PipelineError, Retrieval
from programs.label_narrowing import default_instructions, described_instructions, plan_call
from programs.trace import capture
from tests.fakes import fake_lm

LABELS = ("card_arrival", "exchange_rate", "pin_blocked", "top_up_failed")
POOL = [
    {"text": "my new card has not arrived", "label": "card_arrival"},
    {"text": "when will my card arrive", "label": "card_arrival"},
    {"text": "card still not delivered", "label": "card_arrival"},
    {"text": "what exchange rate do you use", "label": "exchange_rate"},
    {"text": "is the exchange rate good today", "label": "exchange_rate"},
    {"text": "my pin is blocked", "label": "pin_blocked"},
    {"text": "top up failed again", "label": "top_up_failed"},
]


def node(**settings):
    classifier = Classifier("text", output="label", labels=LABELS, **settings)
    classifier.retrieval = Retrieval.build(POOL, query_fields=("text",), label_field="label", k=4)
    return classifier


def schema_labels(request):
    return request.config.response_format["schema"]["properties"]["label"]["enum"]


def test_votes_rank_the_neighbours_labels_and_narrowing_keeps_the_top_ones():
    retrieval = node().retrieval
    plan = plan_call(retrieval, {"text": "card has not arrived yet"}, labels=LABELS, narrow=2)
    assert plan.labels[0] == "card_arrival" and len(plan.labels) == 2
    assert plan.votes[0][0] == "card_arrival"
    assert all(d["label"] in plan.labels for d in plan.demos)
    assert plan.answer is None
    vote = plan_call(retrieval, {"text": "card has not arrived yet"}, labels=LABELS, mode="vote")
    assert vote.answer == "card_arrival"
    with pytest.raises(PipelineError, match="unknown classifier mode"):
        plan_call(retrieval, {"text": "x"}, labels=LABELS, mode="guess")


def test_a_narrowed_call_offers_the_lm_only_the_candidate_labels():
    lm, engine = fake_lm(lambda fields, inputs: {"label": "exchange_rate"})
    classifier = node(narrow=2)
    with dspy.context(lm=lm.lm, adapter=lm.adapter), lm_usage() as usage:
        answer = classifier(text="which exchange rate applies to my card").label
    assert usage.calls == 1 and answer == "exchange_rate"
    offered = schema_labels(engine.requests[0])
    assert len(offered) == 2 and set(offered) <= set(LABELS)
    system = engine.requests[0].system if isinstance(engine.requests[0].system, str) else json.dumps(
        [getattr(p, "text", "") for p in engine.requests[0].system or ()])
    assert "pin_blocked" not in system and "top_up_failed" not in system
    # The node keeps its full label set for the next call.
    assert classifier.signature.output_fields["label"].annotation.__args__ == LABELS


def test_unanimous_neighbours_and_vote_mode_make_no_lm_call_and_are_recorded():
    lm, engine = fake_lm(lambda fields, inputs: {"label": "pin_blocked"})
    unanimous = node(narrow=3)
    unanimous.retrieval = unanimous.retrieval.with_settings(k=1)
    voting = node(mode="vote")
    with dspy.context(lm=lm.lm, adapter=lm.adapter), lm_usage() as usage:
        assert unanimous(text="my new card has not arrived").label == "card_arrival"
        with capture(voting) as calls:
            assert voting(text="what exchange rate do you use").label == "exchange_rate"
    assert usage.calls == 0 and engine.requests == []
    assert [(c.output, c.lm_calls) for c in calls] == [("exchange_rate", 0)]


def test_vote_mode_without_retrieval_says_how_to_get_one():
    classifier = Classifier("text", output="label", labels=LABELS, mode="vote")
    with pytest.raises(PipelineError, match="--optimizer knn"):
        classifier(text="anything")


def test_label_descriptions_reach_the_prompt_for_the_offered_labels_only():
    lm, engine = fake_lm(lambda fields, inputs: {"label": "card_arrival"})
    descriptions = {"card_arrival": "a card that has not come", "top_up_failed": "a top-up that did not go through"}
    classifier = node(narrow=2, label_descriptions=descriptions)
    with dspy.context(lm=lm.lm, adapter=lm.adapter):
        classifier(text="my card has not arrived, what exchange rate")
    prompt = "".join(str(getattr(p, "text", p)) for p in (engine.requests[0].system or ()))
    assert "card_arrival: a card that has not come" in prompt
    assert "top-up that did not go through" not in prompt  # not a candidate of this call


def test_described_instructions_and_default_instructions():
    assert described_instructions("Pick.", ["a", "b"], {"b": "the second"}) == "Pick.\n\nLabels:\n- b: the second"
    assert described_instructions("Pick.", ["a"], None) == "Pick."
    assert default_instructions(["a", "b"]) == "Classify the input into exactly one of: a, b."


def test_settings_survive_save_and_load(tmp_path):
    classifier = node(narrow=3, mode="lm", label_descriptions={"pin_blocked": "a blocked PIN"})
    path = tmp_path / "node.json"
    classifier.save(str(path))
    fresh = Classifier("text", output="label", labels=LABELS)
    fresh.load(str(path))
    assert (fresh.narrow, fresh.mode, fresh.label_descriptions) == (3, "lm", {"pin_blocked": "a blocked PIN"})
    with pytest.raises(PipelineError, match="narrow"):
        Classifier("text", labels=LABELS, narrow=0)


def test_a_confident_vote_answers_without_the_lm_and_a_close_one_asks_it():
    retrieval = node().retrieval  # k=4: three card_arrival neighbours and one other
    query = {"text": "card has not arrived yet"}
    plan = plan_call(retrieval, query, labels=LABELS, narrow=2)
    share = plan.votes[0][1] / sum(w for _, w in plan.votes)
    assert 0.5 < share < 1
    assert plan_call(retrieval, query, labels=LABELS, narrow=2, confident=share - 0.01).answer == "card_arrival"
    assert plan_call(retrieval, query, labels=LABELS, narrow=2, confident=min(1.0, share + 0.01)).answer is None
    with pytest.raises(PipelineError, match="confident"):
        Classifier("text", labels=LABELS, confident=1.5)
