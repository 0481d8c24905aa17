"""Validators per node kind. Each is called ``validator(output, gold=..., example=...,
prediction=..., node=...)`` and returns a Verdict whose feedback says what to change."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from metrics.verdict import Verdict
from programs.nodes import Classifier, CodeGen, Node, Writer
from programs.sqlexec import QueryResult, run_readonly

__all__ = ["LabelMatch", "LengthBounds", "SqlResultMatch", "count_words", "validators_for"]

# Scripts written without spaces (Japanese, Chinese) have no word boundaries to count; a run of
# such characters counts as one word per two characters, the usual rule of thumb for Japanese.
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff66-\uff9f"
_TOKEN = re.compile(rf"[{_CJK}]+|[^\W{_CJK}]+", re.UNICODE)
_SENTENCE_END = re.compile(r"[.!?。！？]+(?:\s|$)")


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


def count_words(text: str) -> int:
    """Words in ``text``: space-delimited words, plus one per two characters of CJK runs."""
    return sum(-(-len(t) // 2) if re.match(rf"[{_CJK}]", t) else 1 for t in _TOKEN.findall(text))


@dataclass(frozen=True)
class LengthBounds:
    """Writer check: the text is non-empty and within word/character/sentence bounds."""

    min_words: int | None = None
    max_words: int | None = None
    min_chars: int | None = None
    max_chars: int | None = None
    max_sentences: int | None = None

    def __call__(self, output: Any, **_: Any) -> Verdict:
        text = "" if output is None else str(output).strip()
        if not text:
            return Verdict.fail("the text is empty; write a reply.", words=0)
        words = count_words(text)
        chars = len(text)
        sentences = max(1, len(_SENTENCE_END.findall(text)))
        problems = []
        if self.min_words is not None and words < self.min_words:
            problems.append(f"text is {words} words, minimum {self.min_words}.")
        if self.max_words is not None and words > self.max_words:
            problems.append(f"text is {words} words, limit {self.max_words}.")
        if self.min_chars is not None and chars < self.min_chars:
            problems.append(f"text is {chars} characters, minimum {self.min_chars}.")
        if self.max_chars is not None and chars > self.max_chars:
            problems.append(f"text is {chars} characters, limit {self.max_chars}.")
        if self.max_sentences is not None and sentences > self.max_sentences:
            problems.append(f"text is {sentences} sentences, limit {self.max_sentences}.")
        details = {"words": words, "chars": chars, "sentences": sentences}
        return Verdict.fail(" ".join(problems), **details) if problems else Verdict.ok(**details)


def _normalise(value: Any) -> Any:
    if isinstance(value, Decimal | float):
        return round(float(value), 6)
    return value


def _rows(result: QueryResult, ordered: bool) -> list[tuple] | Counter:
    rows = [tuple(_normalise(v) for v in row) for row in result.rows]
    return rows if ordered else Counter(rows)


@dataclass(frozen=True)
class SqlResultMatch:
    """CodeGen check: the SQL runs read-only in DuckDB and returns the gold query's result set.

    Rows are compared as a multiset unless the gold query orders its result; column names are
    not compared, column count is.
    """

    max_rows: int = 1000

    def __call__(self, output: Any, *, gold: Any = None, node: Node | None = None, **_: Any) -> Verdict:
        database = getattr(node, "database", None)
        if not database:
            return Verdict.fail("no database is configured for this code-generator node.")
        got = run_readonly(database, "" if output is None else str(output), max_rows=self.max_rows)
        if not got.ok:
            return Verdict.fail(f"the SQL failed: {got.error}", error=got.error)
        if gold is None:
            return Verdict.ok(rows=len(got.rows))
        expected = run_readonly(database, str(gold), max_rows=self.max_rows)
        if not expected.ok:
            return Verdict.fail(f"the gold SQL failed ({expected.error}); fix the dataset.", gold_error=expected.error)
        if len(got.columns) != len(expected.columns):
            return Verdict.fail(
                f"the result has {len(got.columns)} column(s) ({', '.join(got.columns)}), expected "
                f"{len(expected.columns)} ({', '.join(expected.columns)}).")
        ordered = "order by" in str(gold).lower()
        if _rows(got, ordered) == _rows(expected, ordered):
            return Verdict.ok(rows=len(got.rows))
        missing = [r for r in expected.rows if r not in got.rows][:3]
        extra = [r for r in got.rows if r not in expected.rows][:3]
        parts = [f"the result has {len(got.rows)} row(s), expected {len(expected.rows)}."]
        if missing:
            parts.append(f"missing rows: {missing}.")
        if extra:
            parts.append(f"unexpected rows: {extra}.")
        if not missing and not extra and ordered:
            parts.append("the rows are right but in the wrong order.")
        return Verdict.fail(" ".join(parts), expected_rows=len(expected.rows), got_rows=len(got.rows))


_LENGTH_RULES = ("min_words", "max_words", "min_chars", "max_chars", "max_sentences")


def validators_for(node: Node) -> list:
    """The built-in validators for ``node``'s kind and rules, followed by its own validators."""
    if isinstance(node, Classifier):
        built_in: list = [LabelMatch()]
    elif isinstance(node, CodeGen):
        built_in = [SqlResultMatch()]
    elif isinstance(node, Writer):
        built_in = [LengthBounds(**{k: node.rules[k] for k in _LENGTH_RULES if k in node.rules})]
    else:
        built_in = []
    return [*built_in, *node.validators]
