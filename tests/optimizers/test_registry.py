import dspy
import pytest
from dspy.teleprompt import GEPA, BootstrapFewShot, LabeledFewShot, MIPROv2

from metrics import PipelineMetric
from optimizers import OPTIMIZERS, prepare_optimizer
from programs import ConfigError
from programs.builtin import Triage


@pytest.fixture
def metric():
    return PipelineMetric(Triage())


def test_offers_at_least_the_dspy_optimizers():
    assert {"labeled", "bootstrap", "bootstrap-rs", "mipro", "gepa"} <= set(OPTIMIZERS)


def test_defaults_and_overrides(metric):
    prepared = prepare_optimizer("bootstrap", metric, {"max_labeled_demos": 2})
    assert isinstance(prepared.teleprompter, BootstrapFewShot)
    assert prepared.teleprompter.max_labeled_demos == 2
    assert prepared.teleprompter.max_bootstrapped_demos == 4
    assert prepared.settings["init.max_labeled_demos"] == 2


def test_compile_arguments_go_to_compile(metric):
    prepared = prepare_optimizer("labeled", metric, {"k": 3, "sample": False})
    assert isinstance(prepared.teleprompter, LabeledFewShot) and prepared.teleprompter.k == 3
    assert prepared.compile_kwargs == {"sample": False}


def test_templates_are_filled(metric):
    lm = dspy.LM("openai/gpt-4o-mini")
    prepared = prepare_optimizer("mipro", metric, {}, seed=7, lm=lm, threads=3)
    assert isinstance(prepared.teleprompter, MIPROv2)
    assert prepared.teleprompter.seed == 7 and prepared.teleprompter.num_threads == 3
    assert prepared.teleprompter.prompt_model is lm


def test_an_explicit_budget_displaces_auto(metric):
    lm = dspy.LM("openai/gpt-4o-mini")
    prepared = prepare_optimizer("gepa", PipelineMetric(Triage(), feedback=True), {"max_metric_calls": 20}, lm=lm)
    assert isinstance(prepared.teleprompter, GEPA)
    assert prepared.teleprompter.auto is None and prepared.teleprompter.max_metric_calls == 20
    assert prepared.feedback


def test_unknown_optimizer_and_setting(metric):
    with pytest.raises(ConfigError, match=r"unknown optimizer 'bootstrp'\. Did you mean 'bootstrap'"):
        prepare_optimizer("bootstrp", metric)
    with pytest.raises(ConfigError, match="has no setting 'nope'"):
        prepare_optimizer("bootstrap", metric, {"nope": 1})
    with pytest.raises(ConfigError, match="cannot be set"):
        prepare_optimizer("bootstrap", metric, {"metric": 1})


def test_settings_the_optimizer_rejects_are_config_errors(metric):
    with pytest.raises(ConfigError, match="optimizer 'gepa' rejected its settings: GEPA requires a reflection"):
        prepare_optimizer("gepa", metric, {}, lm=None)


def test_textual_optimizers_are_registered_with_budgets(metric):
    from optimizers import TextualOptimizer

    for name in ("protegi", "opro", "ape", "evoprompt", "feedback", "human", "query-aware"):
        assert OPTIMIZERS[name].defaults["max_lm_calls"] > 0 and "budget" in OPTIMIZERS[name].summary
    prepared = prepare_optimizer("opro", metric, {"max_lm_calls": 40, "max_cost": 0.5}, seed=4, threads=2)
    assert isinstance(prepared.teleprompter, TextualOptimizer) and prepared.uses_valset
    assert prepared.teleprompter.max_lm_calls == 40 and prepared.teleprompter.max_cost == 0.5
    assert prepared.teleprompter.seed == 4 and prepared.teleprompter.num_threads == 2
    lm, writer = dspy.LM("openai/task-model"), dspy.LM("openai/writer-model")
    assert prepare_optimizer("opro", metric, {}, lm=lm).teleprompter.prompt_lm is lm  # default: the task LM
    assert prepare_optimizer("opro", metric, {}, lm=lm, prompt_lm=writer).teleprompter.prompt_lm is writer
    assert "TWO LM calls per query at inference" in OPTIMIZERS["query-aware"].summary


def test_a_sequence_runs_one_optimizer_after_the_other(metric):
    from optimizers import OptimizerSequence, RetrievalFewShot
    from optimizers.registry import spec_for
    from tests.optimizers.scripted import run, scripted_lm, triage_split

    prepared = prepare_optimizer("protegi,knn", metric, {"max_lm_calls": 200, "k": 4, "steps": 1, "val_size": 0})
    assert isinstance(prepared.teleprompter, OptimizerSequence) and prepared.uses_valset
    assert prepared.settings["sequence"] == "protegi,knn"
    assert prepared.settings["protegi.init.max_lm_calls"] == 200 and prepared.settings["knn.init.k"] == 4
    assert "protegi.init.k" not in prepared.settings
    assert spec_for("protegi,knn").summary == "protegi then knn"
    train, val = triage_split()
    lm, _, _ = scripted_lm({"improved_instruction": "GOOD: route by the team that must act."})
    program = run(prepared.teleprompter, lm, train, val[:6])
    assert "GOOD" in program.classify.signature.instructions  # the instructions protegi found ...
    assert program.classify.retrieval is not None and program.classify.retrieval.k == 4  # ... kept by knn
    assert set(prepared.teleprompter.chosen) == {"protegi", "knn"}
    assert isinstance(prepared.teleprompter.steps[1][1], RetrievalFewShot)
    with pytest.raises(ConfigError, match="no optimizer of 'protegi,knn' has a setting 'nope'"):
        prepare_optimizer("protegi,knn", metric, {"nope": 1})
    with pytest.raises(ConfigError, match="unknown optimizer 'knnn'"):
        prepare_optimizer("protegi,knnn", metric, {})
