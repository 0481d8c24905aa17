"""make_lm and PipecLM: explicit retry settings, failures as pipec errors, and the first
configuration error remembered past code that swallows exceptions (DSPy's Evaluate)."""

from __future__ import annotations

import dspy
import pytest
from dspy import lm15

from experiments.lm import DEFAULT_RETRIES, PipecLM, make_lm, raise_config_errors
from programs.errors import ConfigError, LMAuthError, LMServerError
from tests.fakes import ScriptedEngine


def failing_engine(*failures):
    """An engine raising ``failures`` in turn, then answering."""
    queue = list(failures)

    def respond(fields, inputs):
        if queue:
            raise queue.pop(0)
        return {name: "ok" for name in fields}

    return ScriptedEngine(respond)


def pipec_lm(engine, **kw):
    kw.setdefault("num_retries", 0)
    return PipecLM("openai/served", spec="openai/served", engine=engine, cache=False, **kw)


def test_remote_lms_get_explicit_retries_and_timeout(monkeypatch):
    config = make_lm("openai/gpt-4o-mini")
    assert isinstance(config.lm, PipecLM) and config.lm.num_retries == DEFAULT_RETRIES
    assert config.settings["num_retries"] == DEFAULT_RETRIES and config.settings["timeout"] == 120.0
    monkeypatch.setenv("PIPEC_LM_RETRIES", "1")
    monkeypatch.setenv("PIPEC_LM_TIMEOUT", "2.5")
    config = make_lm("openai/gpt-4o-mini", flag="--judge-lm")
    assert (config.lm.num_retries, config.lm.kwargs["timeout"], config.lm.flag) == (1, 2.5, "--judge-lm")
    monkeypatch.setenv("PIPEC_LM_MAX_TOKENS", "48")
    monkeypatch.setenv("PIPEC_LM_TEMPERATURE", "0")
    config = make_lm("openai/gpt-4o-mini")
    assert (config.settings["max_tokens"], config.settings["temperature"]) == (48, 0.0)
    assert make_lm("openai/gpt-4o-mini", max_tokens=10, temperature=0.5).settings["max_tokens"] == 10
    monkeypatch.setenv("PIPEC_LM_RETRIES", "many")
    with pytest.raises(ConfigError, match="PIPEC_LM_RETRIES='many' is not a valid number"):
        make_lm("openai/gpt-4o-mini")


def test_a_transient_failure_is_retried_by_dspy_then_answers():
    engine = failing_engine(lm15.ServerError("busy", status=503, retry_after=0.0),
                            lm15.RateLimitError("slow down", status=429, retry_after=0.0))
    lm = pipec_lm(engine, num_retries=2)
    assert lm("hi") == ["{}"]  # the scripted answer (no output fields in a bare prompt)
    assert len(engine.requests) == 3 and lm.failures.errors == 0


def test_past_its_retries_a_transient_failure_is_a_pipec_error_and_not_remembered():
    engine = failing_engine(*[lm15.ServerError("busy", status=503, retry_after=0.0)] * 2)
    lm = pipec_lm(engine, num_retries=1)
    with pytest.raises(LMServerError, match=r"^--lm openai/served: the provider failed \(HTTP 503\) after retries"):
        lm("hi")
    assert len(engine.requests) == 2 and lm.failures.errors == 1 and lm.failures.config_error is None
    assert lm("hi") == ["{}"] and len(engine.requests) == 3  # the next call goes out again


def test_a_configuration_error_is_remembered_and_later_calls_fail_at_once():
    engine = failing_engine(lm15.AuthError("invalid api key", status=401))
    lm = pipec_lm(engine, num_retries=3)
    with pytest.raises(LMAuthError):
        lm("hi")
    assert len(engine.requests) == 1  # an auth failure is not retried
    copy = lm.copy(temperature=0.5)  # DSPy copies LMs (optimizers, repeats): they share what failed
    with pytest.raises(LMAuthError, match="the API key was rejected"):
        copy("hi again")
    assert len(engine.requests) == 1


def test_a_configuration_error_swallowed_by_dspy_evaluate_is_raised_after_it():
    engine = failing_engine(*[lm15.AuthError("invalid api key", status=401)] * 3)
    lm = pipec_lm(engine)
    program = dspy.Predict("question -> answer")
    devset = [dspy.Example(question=f"q{i}", answer="ok").with_inputs("question") for i in range(3)]
    evaluate = dspy.Evaluate(devset=devset, metric=lambda e, p, trace=None: 1.0, num_threads=1,
                             display_progress=False, max_errors=10)
    with pytest.raises(LMAuthError, match="API key was rejected"), raise_config_errors(lm), \
            dspy.context(lm=lm, adapter=dspy.JSONAdapter()):
        result = evaluate(program)
        assert result.score == 0.0  # DSPy scored the failures 0 and went on: pipec does not let that stand
    assert len(engine.requests) == 1


def test_without_a_configuration_error_the_block_is_left_alone():
    lm = pipec_lm(failing_engine())
    with raise_config_errors(lm, None, "not an lm"), dspy.context(lm=lm, adapter=dspy.JSONAdapter()):
        assert dspy.Predict("question -> answer")(question="q").answer == "ok"
