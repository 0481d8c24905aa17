"""Choosing the LM: ``local`` (the embedded default) or any LiteLLM model string.

Keys come from the environment only (LiteLLM reads ``OPENAI_API_KEY`` and friends); they are
never put into settings that get logged.

Every LM pipec builds is a :class:`PipecLM`: a ``dspy.LM`` whose failures are pipec's
``LMError`` classes (experiments.lm_errors holds the map). Transient failures are retried by
DSPy first (``num_retries``, 1, 2, 4 s backoff or the provider's Retry-After). The first
configuration error (no key, unknown model, unreachable server) is remembered: later calls
fail at once with it, and :func:`raise_config_errors` re-raises it after an optimizer that
swallowed it (DSPy's evaluations count exceptions as zero scores) lets go.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import dspy
from dspy.utils.exceptions import LMError as DSPyLMError

from programs.adapters import ChatAdapter, JSONAdapter
from programs.errors import ConfigError, LMConfigError, LMError

__all__ = ["LMConfig", "LMFailures", "PipecLM", "make_lm", "raise_config_errors"]

DEFAULT_LM = "local"
# DSPy's own retry policy, set explicitly: attempts after the first for rate limits, timeouts,
# dropped connections and 5xx (backoff 1, 2, 4 s, or the provider's Retry-After).
DEFAULT_RETRIES = 3
DEFAULT_TIMEOUT = 120.0  # seconds a remote LM may stay silent before the request fails (then retried)


class LMFailures:
    """The LM failures one :class:`PipecLM` (and its copies) met: the first configuration error
    and a count of the others. Shared by copies and deep copies (DSPy copies LMs per thread)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.config_error: LMConfigError | None = None
        self.errors = 0

    def __deepcopy__(self, memo: dict) -> LMFailures:
        return self

    def record(self, error: LMError) -> None:
        with self._lock:
            self.errors += 1
            if isinstance(error, LMConfigError) and self.config_error is None:
                self.config_error = error


class PipecLM(dspy.LM):
    """A ``dspy.LM`` whose failures are pipec ``LMError`` subclasses (see experiments.lm_errors).

    Args:
        model: The LiteLLM model string DSPy gets.
        spec: The model as the user named it (``local``, ``openai/gpt-4o-mini``), for messages.
        flag: The option that chose it (``--lm``, ``--judge-lm``...), for messages.
        **kwargs: ``dspy.LM``'s arguments.
    """

    def __init__(self, model: str, *, spec: str | None = None, flag: str = "--lm", **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        self.spec, self.flag = spec or model, flag
        self.failures = LMFailures()

    def _failed(self, exc: BaseException) -> LMError:
        from experiments.lm_errors import translate_lm_error

        error = translate_lm_error(exc, model=self.spec, flag=self.flag, api_base=self.kwargs.get("api_base"))
        self.failures.record(error)
        return error

    def _refuse_if_misconfigured(self) -> None:
        known = self.failures.config_error
        if known is not None:  # the setting is still wrong: say so again without another request
            raise type(known)(str(known), model=known.model, flag=known.flag)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self._refuse_if_misconfigured()
        try:
            return super().__call__(*args, **kwargs)
        except (DSPyLMError, LMError) as exc:
            raise self._failed(exc) from exc

    async def acall(self, *args: Any, **kwargs: Any) -> Any:
        self._refuse_if_misconfigured()
        try:
            return await super().acall(*args, **kwargs)
        except (DSPyLMError, LMError) as exc:
            raise self._failed(exc) from exc


@contextmanager
def raise_config_errors(*lms: Any) -> Iterator[None]:
    """Raises the first configuration error any of ``lms`` met inside the block, even when code in
    between (an optimizer's evaluation, DSPy's ParallelExecutor) caught it and went on.

    Args:
        *lms: ``dspy.LM``s or ``LMConfig``s; those that are not :class:`PipecLM` are ignored.
    """
    failures = []
    for lm in lms:
        lm = getattr(lm, "lm", lm)
        if isinstance(lm, PipecLM) and all(f is not lm.failures for f in failures):
            failures.append(lm.failures)

    def first() -> LMConfigError | None:
        return next((f.config_error for f in failures if f.config_error is not None), None)

    try:
        yield
    except Exception as exc:
        error = first()
        if error is not None and error is not exc:
            raise error from exc
        raise
    error = first()
    if error is not None:
        raise error


@dataclass
class LMConfig:
    """A configured LM, its adapter, and the settings that describe it (no secrets).

    Attributes:
        lm: The ``dspy.LM``.
        adapter: The DSPy adapter to use with it (JSON with schemas for the local model).
        settings: What to record: model, temperature, max_tokens, api_base, engine settings.
        engine: The local engine, when the LM is the embedded one (it counts its own calls).
    """

    lm: dspy.LM
    adapter: Any
    settings: dict[str, Any] = field(default_factory=dict)
    engine: Any = None


def make_lm(spec: str | None = None, *, api_base: str | None = None, temperature: float | None = None,
            max_tokens: int | None = None, cache: bool = True, flag: str = "--lm") -> LMConfig:
    """Builds the LM ``spec`` names.

    Args:
        spec: ``local`` for the embedded SmolLM2, or a LiteLLM model string such as
            ``openai/gpt-4o-mini``. Default: ``$PIPEC_LM``, else ``local``.
        api_base: Base URL of an OpenAI-compatible server (vLLM, Ollama, llama.cpp server); a
            model name without a provider prefix is then sent as ``openai/<name>``.
        temperature: Sampling temperature (default 0 for the local model, the provider's otherwise).
        max_tokens: Output token limit.
        cache: Whether DSPy's response cache is used.
        flag: The option that named the LM (``--lm``, ``--judge-lm``), for error messages.

    Remote LMs retry transient failures ``$PIPEC_LM_RETRIES`` times (default 3), wait at most
    ``$PIPEC_LM_TIMEOUT`` seconds (default 120) for a reply, and ``$PIPEC_LM_MAX_TOKENS`` (if set)
    bounds their output when ``max_tokens`` is not given (``$PIPEC_LM_TEMPERATURE`` likewise sets
    the temperature, else the provider's default applies).
    """
    spec = (spec or os.environ.get("PIPEC_LM") or DEFAULT_LM).strip()
    if not spec:
        raise ConfigError("--lm is empty: use 'local' or a model string like openai/gpt-4o-mini")
    if spec == "local":
        if api_base:
            raise ConfigError("--api-base does not apply to --lm local; pass a model name served there")
        from experiments.local_lm import LocalEngine

        engine = LocalEngine()
        temperature = 0.0 if temperature is None else temperature
        max_tokens = max_tokens or 256
        lm = PipecLM(engine.model_id, spec=spec, flag=flag, engine=engine, temperature=temperature,
                     max_tokens=max_tokens, cache=cache, num_retries=0)
        settings = {"model": engine.model_id, "temperature": temperature, "max_tokens": max_tokens,
                    "cache": cache, "adapter": "JSONAdapter",
                    **{f"engine.{k}": v for k, v in engine.settings().items()}}
        return LMConfig(lm, JSONAdapter(), settings, engine)
    model = spec
    kwargs: dict[str, Any] = {}
    if api_base:
        if "/" not in model:
            model = f"openai/{model}"
        kwargs["api_base"] = api_base
        # OpenAI-compatible servers often need no key, but the client insists on one.
        if not any(os.environ.get(v) for v in ("OPENAI_API_KEY", "PIPEC_API_KEY")):
            kwargs["api_key"] = "unused"
        elif os.environ.get("PIPEC_API_KEY"):
            kwargs["api_key"] = os.environ["PIPEC_API_KEY"]
    temperature = _env_number("PIPEC_LM_TEMPERATURE", None, float) if temperature is None else temperature
    if temperature is not None:
        kwargs["temperature"] = temperature
    max_tokens = max_tokens or _env_number("PIPEC_LM_MAX_TOKENS", None, int)
    if max_tokens is not None:
        kwargs["max_tokens"] = max_tokens
    retries = _env_number("PIPEC_LM_RETRIES", DEFAULT_RETRIES, int)
    kwargs["timeout"] = _env_number("PIPEC_LM_TIMEOUT", DEFAULT_TIMEOUT, float)
    try:
        lm = PipecLM(model, spec=spec, flag=flag, cache=cache, num_retries=retries, **kwargs)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"--lm {spec!r}: {exc}") from exc
    settings = {"model": model, "temperature": temperature, "max_tokens": max_tokens, "cache": cache,
                "api_base": api_base, "adapter": "ChatAdapter", "num_retries": retries, "timeout": kwargs["timeout"]}
    return LMConfig(lm, ChatAdapter(), settings, None)


def _env_number(name: str, default: Any, kind: type) -> Any:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = kind(raw)
    except ValueError:
        value = -1
    if value < 0 or (name.endswith(("TIMEOUT", "MAX_TOKENS")) and value == 0):
        raise ConfigError(f"{name}={raw!r} is not a valid number: use e.g. {name}={default}")
    return value
