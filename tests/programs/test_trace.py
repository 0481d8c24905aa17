import dspy

from programs.builtin import Triage
from programs.retrieval import Retrieval
from programs.trace import calls_from_dspy_trace, capture, node_calls
from tests.fakes import fake_lm, triage_respond


def test_nothing_is_recorded_outside_a_capture():
    lm, _ = fake_lm(triage_respond)
    pipeline = Triage()
    with dspy.context(lm=lm.lm, adapter=lm.adapter):
        prediction = pipeline.classify(message="my parcel")
    assert node_calls(prediction) is None


def test_a_pipeline_call_carries_its_node_calls_and_leaves_no_trace_behind():
    lm, _ = fake_lm(triage_respond)
    with dspy.context(lm=lm.lm, adapter=lm.adapter):
        prediction = Triage()(message="パスワードを忘れました password")
    calls = node_calls(prediction)
    assert [c.node for c in calls] == ["classify", "reply"] and calls[0].output == "account"
    assert calls[0].inputs["message"] == "パスワードを忘れました password"  # Japanese intact


def test_captures_nest_and_an_optimizers_trace_is_left_alone():
    lm, _ = fake_lm(triage_respond)
    pipeline = Triage()
    with dspy.context(lm=lm.lm, adapter=lm.adapter, trace=[]):
        with capture(pipeline) as outer:
            pipeline(message="invoice question")
        bootstrap_trace = dspy.settings.trace
    assert [c.node for c in outer] == ["classify", "reply"]
    assert [name for name, _ in [(calls_from_dspy_trace(pipeline, bootstrap_trace)[i].node, 0)
                                 for i in range(2)]] == ["classify", "reply"]


def test_retrieved_demos_are_recorded_per_call():
    lm, _ = fake_lm(triage_respond)
    pipeline = Triage()
    pool = [{"message": "my parcel is late", "category": "shipping"},
            {"message": "refund my order", "category": "refund"}]
    pipeline.classify.retrieval = Retrieval.build(pool, query_fields=("message",), k=1)
    with dspy.context(lm=lm.lm, adapter=lm.adapter), capture(pipeline) as calls:
        pipeline(message="where is my parcel")
    assert calls[0].demos == [{"message": "my parcel is late", "category": "shipping"}]
    assert calls[1].demos == []


def test_node_names_are_named_predictors_names_and_skip_the_call_history():
    from programs.trace import _names

    class Nested(dspy.Module):
        def __init__(self):
            super().__init__()
            self.inner = Triage()
            self.steps = [Triage().classify, Triage().reply]

    program = Nested()
    program.history = [{"messages": i} for i in range(50_000)]  # never walked
    assert sorted(_names(program).values()) == sorted(name for name, _ in program.named_predictors())


def test_an_evaluations_only_callback_sees_evaluations_and_not_the_calls_inside_them():
    from dspy.utils.callback import BaseCallback

    from programs.trace import EVALUATIONS_ONLY

    class Seen(BaseCallback):
        def __init__(self):
            self.events = []

        def on_evaluate_start(self, call_id, instance, inputs):
            self.events.append("evaluate")

        def on_module_start(self, call_id, instance, inputs):
            self.events.append("module")

        def on_lm_start(self, call_id, instance, inputs):
            self.events.append("lm")

    only, every = Seen(), Seen()
    setattr(only, EVALUATIONS_ONLY, True)
    lm, _ = fake_lm(triage_respond)
    devset = [dspy.Example(message="my parcel", category="shipping").with_inputs("message")]
    with dspy.context(lm=lm.lm, adapter=lm.adapter, callbacks=[only, every]):
        dspy.Evaluate(devset=devset, metric=lambda e, p, t=None: 1.0, display_progress=False)(Triage())
        assert dspy.settings.callbacks == [only, every]  # left as it was
    assert only.events == ["evaluate"]
    assert every.events[0] == "evaluate" and every.events.count("lm") == 2 and "module" in every.events
