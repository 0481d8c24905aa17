"""Rule checks for writer nodes: length, required and banned phrases, language, format.

Each is a binary check (score 1 or 0) whose feedback names the rule, the measured value and the
limit, so an optimizer knows what to change: "text is 212 words, limit 120", "banned phrase
'delve' (generic LLM prose) on word 14". Writers declare them through ``Writer(rules={...})``;
``metrics.validators.validators_for`` builds them.

Example:
    >>> Phrases(banned=GENERIC_PROSE)("Let us delve into your order.").feedback
    "remove the banned phrase 'delve' (generic LLM prose)."
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from metrics.language import LANGUAGES, language_matches
from metrics.verdict import Verdict

__all__ = ["FORMATS", "GENERIC_PROSE", "Format", "Language", "LengthBounds", "Phrases", "count_words"]

# Scripts written without spaces (Japanese, Chinese) have no word boundaries to count; a run of
# such characters counts as one word per two characters, the usual rule of thumb for Japanese.
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff66-\uff9f"
_TOKEN = re.compile(rf"[{_CJK}]+|[^\W{_CJK}]+", re.UNICODE)
_SENTENCE_END = re.compile(r"[.!?。！？]+(?:\s|$)")

GENERIC_PROSE: tuple[str, ...] = (
    "delve", "delves", "delved", "delving", "crucial", "tapestry", "testament", "realm", "embark",
    "embarking", "pivotal", "seamless", "seamlessly", "meticulous", "meticulously", "intricate",
    "multifaceted", "holistic", "synergy", "paradigm shift", "game-changer", "unleash", "unlock the power",
    "elevate", "foster", "underscore", "underscores", "vibrant", "bustling", "ever-evolving",
    "fast-paced world", "in today's digital age", "navigate the complexities", "it's important to note",
    "it is important to note", "it's worth noting", "in conclusion", "as an ai language model",
    "i hope this email finds you well", "rest assured",
)
"""Words and phrases that mark generic LLM prose; ``banned_phrases: True`` bans them all."""

FORMATS = ("json", "markdown", "text")


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
    min_sentences: int | None = None
    max_sentences: int | None = None

    def __call__(self, output: Any, **_: Any) -> Verdict:
        text = "" if output is None else str(output).strip()
        if not text:
            return Verdict.fail("the text is empty; write a reply.", words=0)
        measured = {"words": count_words(text), "chars": len(text),
                    "sentences": max(1, len(_SENTENCE_END.findall(text)))}
        unit = {"words": "words", "chars": "characters", "sentences": "sentences"}
        problems = []
        for key, value in measured.items():
            low, high = getattr(self, f"min_{key}"), getattr(self, f"max_{key}")
            if low is not None and value < low:
                problems.append(f"text is {value} {unit[key]}, minimum {low}.")
            if high is not None and value > high:
                problems.append(f"text is {value} {unit[key]}, limit {high}.")
        return Verdict.fail(" ".join(problems), **measured) if problems else Verdict.ok(**measured)


def _pattern(phrase: str) -> re.Pattern[str]:
    """Case-insensitive, whole words only; a side that starts or ends in CJK needs no boundary,
    since those scripts have no spaces between words."""
    body = r"\s+".join(re.escape(part) for part in phrase.split())
    left = "" if re.match(rf"[{_CJK}]", phrase) else r"(?<!\w)"
    right = "" if re.search(rf"[{_CJK}]$", phrase) else r"(?!\w)"
    return re.compile(f"{left}{body}{right}", re.IGNORECASE)


@dataclass(frozen=True)
class Phrases:
    """Writer check: every required phrase appears, no banned phrase does (whole words, any case).

    Args:
        required: Phrases the text must contain.
        banned: Phrases the text must not contain; ``GENERIC_PROSE`` is a ready list.
    """

    required: tuple[str, ...] = ()
    banned: tuple[str, ...] = ()

    def __call__(self, output: Any, **_: Any) -> Verdict:
        text = "" if output is None else str(output)
        missing = [p for p in self.required if not _pattern(p).search(text)]
        found = [p for p in self.banned if _pattern(p).search(text)]
        problems = []
        if missing:
            problems.append(f"include the required phrase{'s' * (len(missing) > 1)} "
                            f"{', '.join(repr(p) for p in missing)}.")
        if found:
            generic = set(found) & set(GENERIC_PROSE)
            label = " (generic LLM prose)" if generic == set(found) else ""
            problems.append(f"remove the banned phrase{'s' * (len(found) > 1)} "
                            f"{', '.join(repr(p) for p in found)}{label}.")
        if problems:
            return Verdict.fail(" ".join(problems), missing_phrases=missing, banned_found=found)
        return Verdict.ok()


@dataclass(frozen=True)
class Language:
    """Writer check: the text is written in ``code`` (``"ja"`` = Japanese), judged by script."""

    code: str

    def __call__(self, output: Any, **_: Any) -> Verdict:
        text = "" if output is None else str(output)
        ok, found = language_matches(text, self.code)
        details = {"language": found.code, "script": found.script}
        if ok:
            return Verdict.ok(**details)
        return Verdict.fail(f"the text is in {found.name}, expected {LANGUAGES[self.code]} ({self.code}); "
                            f"write it in {LANGUAGES[self.code]}.", **details)


def _markdown_problems(lines: Sequence[str]) -> list[str]:
    problems, fence = [], None
    for number, line in enumerate(lines, start=1):
        stripped = line.strip()
        if stripped.startswith("```"):
            fence = None if fence else number
            continue
        if fence:
            continue
        if re.match(r"#{1,6}[^#\s]", stripped):
            problems.append(f"line {number}: the heading {stripped[:30]!r} needs a space after '#'")
        if re.search(r"\[[^\]]*\]\([^)]*$", stripped):
            problems.append(f"line {number}: a link is not closed with ')'")
    if fence:
        problems.append(f"the ``` code fence opened on line {fence} is never closed")
    table = [(n, line) for n, line in enumerate(lines, start=1) if line.strip().startswith("|")]
    widths = {line.strip().strip("|").count("|") for _, line in table}
    if len(widths) > 1:
        problems.append(f"the table rows (lines {table[0][0]}-{table[-1][0]}) have different numbers of columns")
    return problems


_MARKUP = (
    (re.compile(r"^\s{0,3}#{1,6}\s", re.M), "a heading"),
    (re.compile(r"^\s*[-*+]\s+\S", re.M), "a bullet list"),
    (re.compile(r"\*\*[^*\n]+\*\*|__[^_\n]+__"), "bold markup"),
    (re.compile(r"```"), "a code fence"),
    (re.compile(r"`[^`\n]+`"), "inline code"),
    (re.compile(r"\[[^\]\n]+\]\([^)\s]+\)"), "a link"),
    (re.compile(r"</?[a-zA-Z][a-zA-Z0-9]*(\s[^>]*)?>"), "an HTML tag"),
)


@dataclass(frozen=True)
class Format:
    """Writer check: the text is valid JSON, well-formed Markdown, or plain text (no markup)."""

    kind: str

    def __call__(self, output: Any, **_: Any) -> Verdict:
        text = "" if output is None else str(output).strip()
        if self.kind == "json":
            try:
                json.loads(text)
            except json.JSONDecodeError as exc:
                hint = " Remove the ``` fence around it." if text.startswith("```") else ""
                return Verdict.fail(f"the text is not valid JSON: {exc.msg} at line {exc.lineno} column "
                                    f"{exc.colno}.{hint}", format="json")
            return Verdict.ok(format="json")
        if self.kind == "markdown":
            problems = _markdown_problems(text.splitlines())
            if problems:
                return Verdict.fail(f"the Markdown is malformed: {'; '.join(problems)}.", format="markdown")
            return Verdict.ok(format="markdown")
        for pattern, what in _MARKUP:
            match = pattern.search(text)
            if match:
                line = text.count("\n", 0, match.start()) + 1
                return Verdict.fail(f"the text contains markup ({what} on line {line}: {match.group().strip()!r}); "
                                    "write plain text.", format="text")
        return Verdict.ok(format="text")
