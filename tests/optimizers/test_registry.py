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
