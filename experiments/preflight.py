"""Preflight: every LM a compile or an evaluation will use answers once before an MLflow run exists.

A wrong key, an unknown model or provider, or an ``--api-base`` nobody listens on is then one
line and exit status 2, never a run that scores 0. Two steps per remote LM:

1. No network: the provider is one DSPy (lm15) or LiteLLM can route, and an API key is there
   (the LM's own ``api_key``, else LiteLLM's environment check for the provider).
2. One minimal real request (a few output tokens, DSPy's cache bypassed, one retry), so a key
   the provider rejects or a server that is down is found too.

The embedded LM needs neither: it is checked when it loads. ``--no-preflight`` skips both steps.

First of all, the MLflow tracking URI is looked at (``experiments.liveness.check_tracking_uri``,
no request to MLflow): a mistyped ``MLFLOW_TRACKING_URI`` is one line and exit status 2 too,
before any LM is asked.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import dspy

from experiments.lm_errors import key_env_vars, known_provider, translate_lm_error
from programs.errors import LMAuthError, LMConfigError, LMError, LMNotFoundError

__all__ = ["PreflightResult", "lms_in", "preflight"]

_EXAMPLE = "openai/gpt-4o-mini"
_PING = "Reply with the single word: ok"


@dataclass
class PreflightResult:
    """What the preflight checked: per LM, ``"ok"``, ``"embedded"`` or the transient failure it
    met (not fatal: the run retries), and the seconds it took."""

    checked: dict[str, str]
    seconds: float


def lms_in(*sources: Any) -> list[tuple[str, dspy.BaseLM]]:
    """The distinct LMs in ``sources``, each with the flag that named it.

    Args:
        *sources: ``(flag, x)`` pairs where ``x`` is a ``dspy.LM``, an ``LMConfig`` (anything with
            ``.lm``), an optimizer (its attributes holding LMs: MIPROv2's prompt/task model,
            GEPA's reflection LM, pipec's prompt LM), or None.
    """
    found: list[tuple[str, dspy.BaseLM]] = []

    def add(flag: str, value: Any) -> None:
        lm = value if isinstance(value, dspy.BaseLM) else getattr(value, "lm", None)
        if isinstance(lm, dspy.BaseLM) and all(lm is not seen for _, seen in found):
            found.append((getattr(lm, "flag", None) or flag, lm))

    for flag, source in sources:
        if source is None:
            continue
        if isinstance(source, dspy.BaseLM) or isinstance(getattr(source, "lm", None), dspy.BaseLM):
            add(flag, source)
            continue
        for name, value in sorted(vars(source).items()):  # an optimizer: the LMs it holds
            add(f"{flag} ({name})", value)
    return found


def _spec(lm: dspy.BaseLM) -> str:
    return getattr(lm, "spec", None) or lm.model


def _offline(flag: str, lm: dspy.BaseLM) -> None:
    """The no-network step: a provider that can be routed, and a key where one is needed."""
    import os

    from dspy.clients.engines.lm15_engine import LM15Engine
    from dspy.lm15 import LM15Error, RouterConfig

    spec = _spec(lm)
    if not known_provider(lm.model):
        provider = lm.model.split("/", 1)[0] if "/" in lm.model else lm.model
        raise LMNotFoundError(f"unknown provider {provider!r} in {flag} {spec}: use a LiteLLM model string such "
                              f"as {_EXAMPLE}", model=spec, flag=flag)
    if lm.kwargs.get("api_key"):
        return
    fix = " (or pass --lm local)" if flag == "--lm" else ""
    try:
        resolution = LM15Engine(RouterConfig(env={}), model_type="chat").resolve(lm.model)
    except LM15Error:  # a provider only LiteLLM routes: LiteLLM's own environment check
        import litellm

        try:
            env = litellm.validate_environment(model=lm.model)
        except Exception:  # LiteLLM cannot tell: the real request will
            return
        if not env.get("keys_in_environment", True):
            keys = [k for k in env.get("missing_keys") or [] if k.endswith("_KEY")] or key_env_vars(lm.model)
            raise LMAuthError(f"{flag} {spec}: no API key: set {' or '.join(keys)}{fix}", model=spec,
                              flag=flag) from None
        return
    if (resolution.credential_policy == "key" and resolution.env_key and not resolution.placeholder_key
            and not os.environ.get(resolution.env_key)):
        raise LMAuthError(f"{flag} {spec}: no API key: set {resolution.env_key}{fix}", model=spec, flag=flag)


def _ping(flag: str, lm: dspy.BaseLM) -> str:
    """The one real request; a configuration error raises, a transient failure is returned."""
    probe = lm.copy(cache=False, num_retries=min(1, getattr(lm, "num_retries", 1)))
    probe.kwargs["max_tokens"] = 8
    try:
        probe(_PING)
    except Exception as exc:
        if isinstance(exc, LMConfigError):
            raise
        if not isinstance(exc, LMError) and not type(exc).__module__.startswith(("dspy", "litellm", "openai", "httpx")):
            raise
        error = exc if isinstance(exc, LMError) else translate_lm_error(
            exc, model=_spec(lm), flag=flag, api_base=lm.kwargs.get("api_base"))
        if isinstance(error, LMConfigError):
            raise error from exc
        return f"{type(error).__name__}: {error}"
    return "ok"


def preflight(lms: Iterable[tuple[str, dspy.BaseLM]], *, say: Callable[[str], None] | None = None
              ) -> PreflightResult:
    """Checks each LM once; raises the first configuration error.

    Args:
        lms: ``(flag, lm)`` pairs, e.g. from :func:`lms_in`.
        say: Where a one-line note goes when a check met a transient failure.

    Raises:
        TrackingStoreError: The MLflow tracking URI names a store that cannot be opened.
        LMConfigError: No key, a rejected key, an unknown provider or model, an unreachable server.
    """
    from experiments.liveness import check_tracking_uri

    start = time.perf_counter()
    check_tracking_uri()
    checked: dict[str, str] = {}
    for flag, lm in lms:
        name = f"{flag} {_spec(lm)}"
        if not isinstance(getattr(lm, "engine", "auto"), str):
            checked[name] = "embedded"  # a custom engine (the local model): nothing to reach
            continue
        _offline(flag, lm)
        checked[name] = _ping(flag, lm)
        if checked[name] != "ok" and say is not None:
            say(f"preflight: {checked[name]} (transient; the run retries)")
    return PreflightResult(checked, time.perf_counter() - start)
