"""Choosing the LM: ``local`` (the embedded default) or any LiteLLM model string.

Keys come from the environment only (LiteLLM reads ``OPENAI_API_KEY`` and friends); they are
never put into settings that get logged.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import dspy

from programs.errors import ConfigError

__all__ = ["LMConfig", "make_lm"]

DEFAULT_LM = "local"


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
            max_tokens: int | None = None, cache: bool = True) -> LMConfig:
    """Builds the LM ``spec`` names.

    Args:
        spec: ``local`` for the embedded SmolLM2, or a LiteLLM model string such as
            ``openai/gpt-4o-mini``. Default: ``$PIPEC_LM``, else ``local``.
        api_base: Base URL of an OpenAI-compatible server (vLLM, Ollama, llama.cpp server); a
            model name without a provider prefix is then sent as ``openai/<name>``.
        temperature: Sampling temperature (default 0 for the local model, the provider's otherwise).
        max_tokens: Output token limit.
        cache: Whether DSPy's response cache is used.
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
        lm = dspy.LM(engine.model_id, engine=engine, temperature=temperature, max_tokens=max_tokens, cache=cache)
        settings = {"model": engine.model_id, "temperature": temperature, "max_tokens": max_tokens,
                    "cache": cache, "adapter": "JSONAdapter",
                    **{f"engine.{k}": v for k, v in engine.settings().items()}}
        return LMConfig(lm, dspy.JSONAdapter(), settings, engine)
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
    if temperature is not None:
        kwargs["temperature"] = temperature
    if max_tokens is not None:
        kwargs["max_tokens"] = max_tokens
    try:
        lm = dspy.LM(model, cache=cache, **kwargs)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"--lm {spec!r}: {exc}") from exc
    settings = {"model": model, "temperature": temperature, "max_tokens": max_tokens, "cache": cache,
                "api_base": api_base, "adapter": "ChatAdapter"}
    return LMConfig(lm, dspy.ChatAdapter(), settings, None)
