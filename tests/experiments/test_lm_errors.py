"""The one map from LM failures to pipec's LMError tree: each class, built from the real DSPy,
lm15, LiteLLM, OpenAI and httpx exception objects (and real failing requests where they are
cheap: a refused connection, an unknown provider, a missing key)."""

from __future__ import annotations

import socket

import dspy
import httpx
import pytest
from dspy import lm15
from dspy.clients.errors import wrap_error
from dspy.utils import exceptions as dx

from experiments.lm_errors import one_line, translate_lm_error
from programs.errors import (
    LMAuthError,
    LMBadRequestError,
    LMConfigError,
    LMError,
    LMNotFoundError,
    LMRateLimitError,
    LMServerError,
    LMTimeoutError,
    LMUnreachableError,
    UserError,
)

MODEL = "openai/gpt-4o-mini"


def dspy_error(canonical: lm15.LM15Error, model: str = MODEL) -> Exception:
    """What DSPy 3.4.1 raises for an engine failure: its projection, raised from the lm15 error."""
    try:
        try:
            raise canonical
        except lm15.LM15Error as exc:
            raise wrap_error(exc, model=model, provider=model.split("/")[0]) from exc
    except Exception as projected:
        return projected


def translate(exc: BaseException, model: str = MODEL, **kw) -> LMError:
    error = translate_lm_error(exc, model=model, **kw)
    assert "\n" not in str(error)
    return error


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_tree_configuration_errors_are_user_errors_transient_ones_are_marked():
    for cls in (LMAuthError, LMNotFoundError, LMUnreachableError):
        assert issubclass(cls, LMConfigError) and issubclass(cls, UserError) and issubclass(cls, LMError)
    for cls in (LMBadRequestError, LMRateLimitError, LMTimeoutError, LMServerError):
        assert issubclass(cls, LMError) and not issubclass(cls, UserError)
    assert [c.transient for c in (LMRateLimitError, LMTimeoutError, LMServerError, LMBadRequestError, LMAuthError)] \
        == [True, True, True, False, False]
    assert len({c.reason for c in (LMAuthError, LMNotFoundError, LMUnreachableError, LMBadRequestError,
                                   LMRateLimitError, LMTimeoutError, LMServerError)}) == 7


def test_no_key_names_the_variable_and_the_fix():
    raw = lm15.NotConfiguredError("no API key found", provider="openai", env_keys=("OPENAI_API_KEY",))
    for exc in (raw, dspy_error(raw)):
        error = translate(exc)
        assert type(error) is LMAuthError
        assert str(error) == "--lm openai/gpt-4o-mini: no API key: set OPENAI_API_KEY (or pass --lm local)"
    judge = translate(dspy_error(raw), flag="--judge-lm")
    assert str(judge) == "--judge-lm openai/gpt-4o-mini: no API key: set OPENAI_API_KEY"


def test_no_key_from_a_real_call(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(dx.LMNotConfiguredError) as caught:
        dspy.LM(MODEL, num_retries=0, cache=False)("hi")
    assert str(translate(caught.value)) == ("--lm openai/gpt-4o-mini: no API key: set OPENAI_API_KEY "
                                            "(or pass --lm local)")


def test_a_rejected_key_is_an_auth_error_and_the_key_never_shows():
    key = "sk-proj-abcdefghijklmnop1234"
    exc = dspy_error(lm15.AuthError(f"Incorrect API key provided: {key}", status=401, provider="openai"))
    assert isinstance(exc, dx.LMAuthError)
    error = translate(exc, api_base="http://127.0.0.1:8000/v1")
    assert type(error) is LMAuthError and "HTTP 401" in str(error)
    assert "OPENAI_API_KEY" in str(error) and "PIPEC_API_KEY" in str(error) and key not in str(error)
    response = httpx.Response(401, request=httpx.Request("POST", "https://api.openai.com/v1/chat/completions"))
    import openai

    sdk = openai.AuthenticationError(f"Incorrect API key provided: {key}", response=response, body=None)
    assert type(translate(sdk)) is LMAuthError


def test_a_key_in_the_environment_is_scrubbed_from_any_line(monkeypatch):
    monkeypatch.setenv("PIPEC_API_KEY", "Zq9-very-secret-value")
    assert one_line("the server said: Zq9-very-secret-value is wrong") == "the server said: *** is wrong"
    assert one_line("Authorization: Bearer abc.def.ghi") == "Authorization: Bearer ***"


def test_billing_is_a_configuration_error():
    error = translate(dspy_error(lm15.BillingError("insufficient_quota", status=402, provider="openai")))
    assert type(error) is LMConfigError and "billing" in str(error)


def test_an_unknown_model_is_not_found():
    error = translate(dspy_error(lm15.UnsupportedModelError("The model `gpt-9` does not exist", status=404,
                                                            provider="openai")), model="openai/gpt-9")
    assert type(error) is LMNotFoundError
    assert str(error) == "--lm openai/gpt-9: the provider does not know model 'gpt-9' (HTTP 404): check the model name"
    plain_404 = dspy_error(lm15.InvalidRequestError("no such model", status=404, provider="openai"))
    assert type(translate(plain_404, model="openai/gpt-9")) is LMNotFoundError


def test_an_unknown_provider_from_a_real_call():
    with pytest.raises(dx.LMError) as caught:
        dspy.LM("nosuchprovider/model-x", num_retries=0, cache=False)("hi")
    error = translate(caught.value, model="nosuchprovider/model-x", flag="--judge-lm")
    assert type(error) is LMNotFoundError
    assert str(error) == ("unknown provider 'nosuchprovider' in --judge-lm nosuchprovider/model-x: use a LiteLLM "
                          "model string such as openai/gpt-4o-mini")


def test_a_refused_connection_is_unreachable_from_a_real_call():
    base = f"http://127.0.0.1:{closed_port()}/v1"
    with pytest.raises(dx.LMTransportError) as caught:
        dspy.LM("openai/served", api_base=base, api_key="unused", num_retries=0, cache=False)("hi")
    error = translate(caught.value, model="openai/served", api_base=base)
    assert type(error) is LMUnreachableError
    assert str(error).startswith(f"--lm openai/served: cannot reach {base} (")
    assert str(error).endswith("is the server running? check --api-base")
    refused = lm15.TransportError("failed to connect")
    refused.__cause__ = ConnectionRefusedError(111, "Connection refused")
    assert type(translate(dspy_error(refused))) is LMUnreachableError
    dns = httpx.ConnectError("[Errno -2] Name or service not known")
    assert "check the network connection" in str(translate(dns))


def test_a_context_window_overflow_and_a_bad_request():
    error = translate(dx.ContextWindowExceededError(model=MODEL))
    assert type(error) is LMBadRequestError and "context window" in str(error)
    error = translate(dspy_error(lm15.InvalidRequestError("temperature must be <= 2", status=400, provider="openai")))
    assert type(error) is LMBadRequestError and "temperature must be <= 2" in str(error)


def test_rate_limits():
    assert type(translate(dspy_error(lm15.RateLimitError("slow down", status=429)))) is LMRateLimitError


def test_timeouts_and_dropped_connections():
    assert type(translate(dspy_error(lm15.TimeoutError("read timed out", status=408)))) is LMTimeoutError
    reset = lm15.TransportError("connection reset by peer")
    assert type(translate(dspy_error(reset))) is LMTimeoutError


def test_server_errors():
    error = translate(dspy_error(lm15.ServerError("upstream unavailable", status=503)))
    assert type(error) is LMServerError and "HTTP 503" in str(error)


def test_litellm_exceptions_that_reach_pipec_raw():
    import litellm

    args = {"llm_provider": "openai", "model": "gpt-4o-mini"}
    cases = [(litellm.AuthenticationError("bad key", **args), LMAuthError),
             (litellm.RateLimitError("slow down", **args), LMRateLimitError),
             (litellm.Timeout("timed out", **args), LMTimeoutError),
             (litellm.InternalServerError("boom", **args), LMServerError),
             (litellm.ServiceUnavailableError("down", **args), LMServerError),
             (litellm.ContextWindowExceededError("too long", **args), LMBadRequestError),
             (litellm.NotFoundError("no such model", **args), LMNotFoundError),
             (litellm.APIConnectionError("Connection refused", **args), LMUnreachableError)]
    for exc, expected in cases:
        assert type(translate(exc)) is expected, exc


def test_the_embedded_engines_error_passes_through_dspys_wrapping():
    own = LMError("the local model failed: out of memory")
    try:
        try:
            raise own
        except LMError as exc:
            raise dx.LMUnexpectedError(str(exc), model="local") from exc
    except dx.LMUnexpectedError as wrapped:
        assert translate(wrapped, model="local") is own


def test_anything_else_is_a_plain_lm_error():
    error = translate(dx.LMUnexpectedError("engine bug", model=MODEL))
    assert type(error) is LMError and str(error) == "--lm openai/gpt-4o-mini: the LM failed: engine bug"
