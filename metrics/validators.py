"""Validators per node kind, built from each node's ``rules``.

Each validator is called ``validator(output, gold=..., example=..., prediction=..., node=...)`` and
returns a Verdict whose feedback says what to change. ``validators_for`` checks a node's rules
when the metric is built, so a misspelt rule is a ``PipelineError`` listing the valid ones before
any LM call, not a check that silently never runs.

- classifier: no rules; ``LabelMatch``.
- writer: ``LengthBounds`` always (the text is non-empty), with ``min_words`` ``max_words``
  ``min_chars`` ``max_chars`` ``min_sentences`` ``max_sentences``; ``Phrases`` with
  ``required_phrases`` ``banned_phrases`` (``True`` bans ``GENERIC_PROSE``); ``Language`` with
  ``language`` (``"ja"``...); ``Format`` with ``format`` (``json``, ``markdown``, ``text``);
  ``LLMJudge`` with ``rubric`` and optionally ``judge_mode`` ``judge_examples`` ``judge_retries``
  ``judge_pass_score``.
- codegen: ``SqlResultMatch``, with ``timeout`` ``max_rows``.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from metrics.judge import JUDGE_MODES, LLMJudge
from metrics.language import LANGUAGES
from metrics.sql_checks import SqlResultMatch
from metrics.verdict import Verdict
from metrics.writer_rules import FORMATS, GENERIC_PROSE, Format, Language, LengthBounds, Phrases, count_words
from programs.errors import PipelineError
from programs.nodes import Classifier, CodeGen, Node, Writer

__all__ = ["RULES", "LabelMatch", "LengthBounds", "SqlResultMatch", "count_words", "validators_for"]


@dataclass(frozen=True)
class LabelMatch:
    """Classifier check: the label is in the node's label set and equals the gold label."""

    def __call__(self, output: Any, *, gold: Any = None, node: Node | None = None, **_: Any) -> Verdict:
        labels = tuple(getattr(node, "labels", ()) or ())
        label = "" if output is None else str(output).strip()
        if labels and label not in labels:
            return Verdict.fail(f"label {label!r} is not one of the valid labels: {', '.join(labels)}.",
                                expected=gold, got=label)
        if gold is None:
            return Verdict.ok(got=label)
        if label == str(gold).strip():
            return Verdict.ok(expected=gold, got=label)
        return Verdict.fail(f"label {str(gold)!r} expected, got {label!r}.", expected=gold, got=label)


_LENGTH_RULES = ("min_words", "max_words", "min_chars", "max_chars", "min_sentences", "max_sentences")
_PHRASE_RULES = ("required_phrases", "banned_phrases")
_JUDGE_RULES = ("rubric", "judge_mode", "judge_examples", "judge_retries", "judge_pass_score")

RULES: dict[str, tuple[str, ...]] = {
    "classifier": (),
    "writer": (*_LENGTH_RULES, *_PHRASE_RULES, "language", "format", *_JUDGE_RULES),
    "codegen": ("timeout", "max_rows"),
}
"""The rule keys each node kind accepts in ``rules={...}``."""


def _check_keys(node: Node) -> None:
    valid = RULES.get(node.kind)
    if valid is None:
        return  # a user-defined kind: its rules are its own business
    for key in node.rules:
        if key not in valid:
            close = difflib.get_close_matches(key, valid, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise PipelineError(f"unknown rule {key!r} for a {node.kind} node.{hint} "
                                f"Valid rules: {', '.join(valid) or 'none'}")


def _count(rules: Mapping[str, Any], key: str) -> int | None:
    value = rules.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise PipelineError(f"rule {key!r} must be a whole number >= 0, got {value!r}")
    return value


def _phrases(rules: Mapping[str, Any], key: str) -> tuple[str, ...]:
    value = rules.get(key)
    if value is None or value is False:
        return ()
    if value is True or value == "default":
        if key != "banned_phrases":
            raise PipelineError(f"rule {key!r} needs a list of phrases, got {value!r}")
        return GENERIC_PROSE
    if isinstance(value, str):
        value = [value]
    phrases = tuple(str(p) for p in value if str(p).strip())
    if not phrases:
        raise PipelineError(f"rule {key!r} is an empty list; give phrases or drop the rule")
    return phrases


def _writer_validators(rules: Mapping[str, Any], judge_lm: Any, judge_adapter: Any) -> list[Callable[..., Any]]:
    bounds = {key: _count(rules, key) for key in _LENGTH_RULES}
    for unit in ("words", "chars", "sentences"):
        low, high = bounds[f"min_{unit}"], bounds[f"max_{unit}"]
        if low is not None and high is not None and low > high:
            raise PipelineError(f"rule min_{unit}={low} is above max_{unit}={high}")
    checks: list[Callable[..., Any]] = [LengthBounds(**bounds)]
    required, banned = _phrases(rules, "required_phrases"), _phrases(rules, "banned_phrases")
    if required or banned:
        checks.append(Phrases(required, banned))
    if "language" in rules:
        if rules["language"] not in LANGUAGES:
            raise PipelineError(f"rule language={rules['language']!r} is not supported; use one of: "
                                f"{', '.join(LANGUAGES)}")
        checks.append(Language(rules["language"]))
    if "format" in rules:
        if rules["format"] not in FORMATS:
            raise PipelineError(f"rule format={rules['format']!r} is not one of: {', '.join(FORMATS)}")
        checks.append(Format(rules["format"]))
    judge_keys = [key for key in _JUDGE_RULES[1:] if key in rules]
    if judge_keys and "rubric" not in rules:
        raise PipelineError(f"rule {judge_keys[0]!r} configures the LLM judge, which needs a 'rubric'")
    if "rubric" in rules:
        mode = rules.get("judge_mode", "score")
        if mode not in JUDGE_MODES:
            raise PipelineError(f"rule judge_mode={mode!r} is not one of: {', '.join(JUDGE_MODES)}")
        checks.append(LLMJudge(rules["rubric"], lm=judge_lm, adapter=judge_adapter, mode=mode,
                               examples=rules.get("judge_examples", ()), retries=rules.get("judge_retries", 2),
                               pass_score=rules.get("judge_pass_score", 0.5)))
    return checks


def _codegen_validators(rules: Mapping[str, Any]) -> list[Callable[..., Any]]:
    settings = {}
    timeout = rules.get("timeout")
    if timeout is not None:
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
            raise PipelineError(f"rule timeout must be a number of seconds > 0, got {timeout!r}")
        settings["timeout"] = float(timeout)
    max_rows = _count(rules, "max_rows")
    if max_rows is not None:
        settings["max_rows"] = max(1, max_rows)
    return [SqlResultMatch(**settings)]


def validators_for(node: Node, *, judge_lm: Any = None, judge_adapter: Any = None) -> list[Callable[..., Any]]:
    """The built-in validators for ``node``'s kind and rules, followed by its own validators.

    Args:
        node: The node.
        judge_lm: The LM of any LLM judge (the task LM in force at call time if None).
        judge_adapter: The adapter for ``judge_lm``.

    Raises:
        PipelineError: An unknown rule key (the message lists the valid ones) or a bad value.
    """
    _check_keys(node)
    if isinstance(node, Classifier):
        built_in: list[Callable[..., Any]] = [LabelMatch()]
    elif isinstance(node, CodeGen):
        built_in = _codegen_validators(node.rules)
    elif isinstance(node, Writer):
        built_in = _writer_validators(node.rules, judge_lm, judge_adapter)
    else:
        built_in = []
    return [*built_in, *node.validators]
