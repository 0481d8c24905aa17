"""One map from every LM failure to pipec's ``LMError`` tree (programs.errors), at the boundary.

DSPy 3.4.1 already projects its engines' failures (lm15 and the LiteLLM compatibility engine)
onto its own tree, ``dspy.utils.exceptions``; this module maps that tree, the lm15 and
LiteLLM/OpenAI/httpx exceptions that can still surface underneath it, and the embedded engine's
``LMError`` to pipec's classes, with one line that names the model and the fix:

=====================================================  =======================  ==========
DSPy 3.4.1 (or underneath)                             pipec                    exit
=====================================================  =======================  ==========
LMNotConfiguredError (no key)                          LMAuthError              2
LMAuthError (401/403)                                  LMAuthError              2
LMBillingError (402, insufficient quota)               LMConfigError            2
LMUnsupportedModelError, HTTP 404, unknown provider    LMNotFoundError          2
LMTransportError caused by a refused connection/DNS    LMUnreachableError       2
LMConfigurationError (other)                           LMConfigError            2
ContextWindowExceededError, LMInvalidRequestError      LMBadRequestError        1
LMRateLimitError                                       LMRateLimitError         1
LMTimeoutError, LMTransportError (other), lock wait    LMTimeoutError           1
LMServerError (5xx)                                    LMServerError            1
anything else                                          LMError                  1
=====================================================  =======================  ==========

DSPy retries the transient ones itself (``dspy.LM(num_retries=...)``: rate limit, timeout,
transport, server errors; the delay is the provider's ``Retry-After`` or 1, 2, 4... s, capped at
60 s); what reaches this map has already been retried. Key values never appear in a message.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator

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
)

__all__ = ["key_env_vars", "known_provider", "one_line", "translate_lm_error"]

_EXAMPLE = "openai/gpt-4o-mini"
# Secrets that may ride in a provider's message: bearer tokens and sk-... style keys.
_SECRET = re.compile(r"(?i)(bearer\s+)\S+|\b(sk|pk|rk|key)-[A-Za-z0-9_\-]{6,}")


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)


def _provider(model: str) -> str:
    return model.split("/", 1)[0] if "/" in model else "openai"


def key_env_vars(model: str) -> list[str]:
    """The environment variables that hold the key for ``model``'s provider (no network).

    DSPy's native router (lm15) names it; else LiteLLM's environment check; else the convention
    ``<PROVIDER>_API_KEY``.
    """
    from dspy.clients.engines.lm15_engine import LM15Engine
    from dspy.lm15 import RouterConfig

    try:
        env_key = LM15Engine(RouterConfig(env={}), model_type="chat").resolve(model).env_key
    except Exception:  # not a provider lm15 routes: ask LiteLLM
        env_key = None
    if env_key:
        return [env_key]
    try:
        import litellm

        missing = litellm.validate_environment(model=model).get("missing_keys") or []
    except Exception:  # an unknown provider: LiteLLM raises; the name below is the convention
        missing = []
    names = [k for k in missing if k.endswith("_KEY")] or missing
    return names or [f"{_provider(model).upper().replace('-', '_')}_API_KEY"]


def one_line(text: object, limit: int = 160) -> str:
    """``text`` on one line, at most ``limit`` characters, without anything that looks like a key
    (bearer tokens, ``sk-...``) and without DSPy's ``[model]`` prefix and "To fix" paragraphs."""
    text = str(text).split("\n\n  To fix:")[0]
    for name, value in os.environ.items():  # the keys this process holds, whatever their shape
        if len(value) >= 8 and name.upper().endswith(("_KEY", "_TOKEN", "_SECRET")) and value in text:
            text = text.replace(value, "***")
    text = _SECRET.sub(lambda m: (m.group(1) or "") + "***", text)
    text = " ".join(text.split())
    text = re.sub(r"^\[[^\]]*\]\s*", "", text)  # DSPy's "[model] " prefix: the line names the model already
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _status(exc: BaseException) -> int | None:
    for err in _chain(exc):
        for name in ("status", "status_code"):
            value = getattr(err, name, None)
            if isinstance(value, int) and not isinstance(value, bool) and 100 <= value <= 599:
                return value
        response = getattr(err, "response", None)
        value = getattr(response, "status_code", None)
        if isinstance(value, int) and 100 <= value <= 599:
            return value
    return None


def known_provider(model: str) -> bool:
    """Whether DSPy can route ``model`` at all: natively (lm15) or through LiteLLM (no network).

    LiteLLM is imported only for a provider lm15 does not know (it is slow to import).
    """
    from dspy.clients.engines.lm15_engine import LM15Engine
    from dspy.lm15 import LM15Error, RouterConfig

    try:
        LM15Engine(RouterConfig(env={}), model_type="chat").resolve(model)
        return True
    except LM15Error:
        pass
    except Exception:  # a refusal of another kind still means the provider was recognised
        return True
    import litellm

    if "/" in model:
        return model.split("/", 1)[0] in litellm.provider_list
    try:
        litellm.get_llm_provider(model)
    except Exception:
        return False
    return True


_REFUSED_WORDS = ("connection refused", "name or service not known", "nodename nor servname",
                  "getaddrinfo failed", "temporary failure in name resolution", "no route to host")


def _refused(exc: BaseException) -> bool:
    """A connection that was refused or a host that does not resolve (not a timeout, not a reset)."""
    import socket

    for err in _chain(exc):
        if isinstance(err, ConnectionRefusedError | socket.gaierror):
            return True
        name, module = type(err).__name__, type(err).__module__ or ""
        if name == "ConnectError" and module.startswith(("dspy", "httpx", "httpcore")):
            return True
        if "timeout" not in name.lower() and any(w in str(err).lower() for w in _REFUSED_WORDS):
            return True
    return False


def translate_lm_error(exc: BaseException, *, model: str, flag: str = "--lm", api_base: str | None = None) -> LMError:
    """The pipec ``LMError`` for ``exc``, a failure of the LM ``model`` chosen by ``flag``.

    Args:
        exc: What the LM call raised: a DSPy ``LMError``, an lm15/LiteLLM/OpenAI/httpx
            exception, or the embedded engine's ``LMError`` (possibly wrapped by DSPy).
        model: The model string as the user gave it (``openai/gpt-4o-mini``, ``local``).
        flag: The option that chose it (``--lm``, ``--judge-lm``), named in the message.
        api_base: The ``--api-base`` in use, if any (named when it cannot be reached).

    Returns:
        The pipec error to raise ``from exc``; ``exc`` itself when it already is one.
    """
    for err in _chain(exc):
        if isinstance(err, LMError):
            return err
    from dspy import lm15
    from dspy.utils import exceptions as dx

    where = f"{flag} {model}"
    kw = {"model": model, "flag": flag}
    dspy_error = next((e for e in _chain(exc) if isinstance(e, dx.LMError)), None)
    if dspy_error is None:
        # Not (yet) projected by DSPy: an lm15 error, or an SDK error from LiteLLM/OpenAI/httpx.
        from dspy.clients.engines.litellm_errors import to_lm15_error
        from dspy.clients.errors import wrap_error

        canonical = next((e for e in _chain(exc) if isinstance(e, lm15.LM15Error)), None)
        if canonical is None and isinstance(exc, Exception):
            canonical = to_lm15_error(exc, model=model, provider=_provider(model))
        if isinstance(canonical, lm15.LM15Error):
            dspy_error = wrap_error(canonical, model=model, provider=_provider(model))
    detail = one_line(dspy_error if dspy_error is not None else exc)
    status = _status(exc)
    code = f" (HTTP {status})" if status else ""
    local_fix = f" (or pass {flag} local)" if flag == "--lm" else ""
    cause = next((e for e in _chain(exc) if isinstance(e, lm15.LM15Error)), None)

    if isinstance(dspy_error, dx.LMNotConfiguredError) or isinstance(cause, lm15.NotConfiguredError):
        keys = list(getattr(dspy_error, "env_keys", None) or getattr(cause, "env_keys", None) or key_env_vars(model))
        return LMAuthError(f"{where}: no API key: set {' or '.join(keys)}{local_fix}", **kw)
    if isinstance(dspy_error, dx.LMAuthError) or status in (401, 403):
        keys = " or ".join(key_env_vars(model) + (["PIPEC_API_KEY"] if api_base else []))
        return LMAuthError(f"{where}: the API key was rejected{code}: set a valid key in {keys}", **kw)
    if isinstance(dspy_error, dx.LMBillingError) or status == 402:
        return LMConfigError(f"{where}: the provider refused for billing or quota{code} ({detail}): check the "
                             "account's plan and credit", **kw)
    if (isinstance(dspy_error, dx.LMUnsupportedModelError) or isinstance(cause, lm15.UnknownModelError)
            or status == 404):
        if not known_provider(model):
            return LMNotFoundError(f"unknown provider {_provider(model)!r} in {where}: use a LiteLLM model string "
                                   f"such as {_EXAMPLE}", **kw)
        name = model.split("/", 1)[-1]
        return LMNotFoundError(f"{where}: the provider does not know model {name!r}{code}: check the model name",
                               **kw)
    if isinstance(dspy_error, dx.LMInvalidRequestError) and status in (None, 400) and not known_provider(model):
        return LMNotFoundError(f"unknown provider {_provider(model)!r} in {where}: use a LiteLLM model string "
                               f"such as {_EXAMPLE}", **kw)
    if (isinstance(dspy_error, dx.LMTransportError) or dspy_error is None) and _refused(exc):
        target = api_base or f"the {_provider(model)} API"
        fix = "is the server running? check --api-base" if api_base else "check the network connection"
        return LMUnreachableError(f"{where}: cannot reach {target} ({detail}): {fix}", **kw)
    if isinstance(dspy_error, dx.ContextWindowExceededError):
        return LMBadRequestError(f"{where}: the prompt exceeds the model's context window{code}: use fewer or "
                                 "shorter demos (--param) or a model with a longer context", **kw)
    if isinstance(dspy_error, dx.LMInvalidRequestError | dx.LMUnsupportedFeatureError):
        return LMBadRequestError(f"{where}: the provider refused the request{code}: {detail}", **kw)
    if isinstance(dspy_error, dx.LMRateLimitError) or status == 429:
        return LMRateLimitError(f"{where}: rate limited{code} after retries: lower --threads or wait", **kw)
    if isinstance(dspy_error, dx.LMTimeoutError | dx.LMTransportError | dx.LMLockTimeoutError) or status in (408, 504):
        return LMTimeoutError(f"{where}: the request timed out or the connection dropped after retries ({detail})",
                              **kw)
    if isinstance(dspy_error, dx.LMServerError) or (status is not None and status >= 500):
        return LMServerError(f"{where}: the provider failed{code} after retries ({detail})", **kw)
    if isinstance(dspy_error, dx.LMConfigurationError):
        return LMConfigError(f"{where}: {detail}", **kw)
    return LMError(f"{where}: the LM failed: {detail}", **kw)
