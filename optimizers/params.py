"""Parsing and checking ``--param key=value`` settings against an optimizer's signature."""

from __future__ import annotations

import difflib
import inspect
import json
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from programs.errors import ConfigError

__all__ = ["accepted_names", "parse_params", "parse_value"]

_LITERALS = {"true": True, "false": False, "none": None, "null": None}


def parse_value(text: str) -> Any:
    """Turns a command-line value into a Python value: int, float, bool, None, JSON, else str."""
    lowered = text.strip().lower()
    if lowered in _LITERALS:
        return _LITERALS[lowered]
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    if text[:1] in "[{":
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            pass
    return text


def parse_params(pairs: Iterable[str]) -> dict[str, Any]:
    """Parses ``key=value`` strings; a pair without ``=`` or with an empty key is a ConfigError."""
    params: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise ConfigError(f"--param {pair!r}: expected key=value, for example --param max_labeled_demos=8")
        params[key] = parse_value(value)
    return params


def accepted_names(fn: Callable[..., Any], exclude: Iterable[str] = ()) -> list[str]:
    """Keyword parameter names of ``fn``, without ``self``, ``*args``/``**kwargs`` and ``exclude``."""
    skip = {"self", *exclude}
    return [
        name for name, p in inspect.signature(fn).parameters.items()
        if name not in skip and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]


def split_params(params: Mapping[str, Any], init_names: list[str], compile_names: list[str],
                 optimizer: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Splits user params into constructor and compile settings; unknown names are a ConfigError."""
    init, compile_ = {}, {}
    for key, value in params.items():
        if key in init_names:
            init[key] = value
        elif key in compile_names:
            compile_[key] = value
        else:
            valid = sorted({*init_names, *compile_names})
            close = difflib.get_close_matches(key, valid, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"--param {key}: optimizer {optimizer!r} has no setting {key!r}.{hint} "
                              f"Valid settings: {', '.join(valid)}")
    return init, compile_
