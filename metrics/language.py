"""Which language a text is written in, from its script (and, for Latin script, its commonest
words). No model, no dependency: enough to tell a Japanese reply from an English one, which is
what a writer rule or an input guard needs.

Example:
    >>> detect_language("ご注文ありがとうございます。").code
    'ja'
    >>> detect_language("Thank you for your order, it ships today.").code
    'en'
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from dataclasses import dataclass

__all__ = ["LANGUAGES", "Detected", "detect_language", "language_matches"]

LANGUAGES: dict[str, str] = {
    "ja": "Japanese", "zh": "Chinese", "ko": "Korean", "en": "English", "fr": "French", "de": "German",
    "es": "Spanish", "it": "Italian", "pt": "Portuguese", "nl": "Dutch", "ru": "Russian", "uk": "Ukrainian",
    "el": "Greek", "ar": "Arabic", "he": "Hebrew", "th": "Thai", "hi": "Hindi",
}

# The script each language is written in; Latin-script languages are told apart by stopwords.
_SCRIPT_LANGUAGE = {"hangul": "ko", "greek": "el", "arabic": "ar", "hebrew": "he", "thai": "th",
                    "devanagari": "hi"}
_STOPWORDS: dict[str, frozenset[str]] = {
    "en": frozenset("the and is are you your we our to of for in it this that with be will have not on at "
                    "please thank thanks can".split()),
    "fr": frozenset("le la les et est vous votre nous notre de des du un une pour dans que qui pas avec "
                    "merci sur au aux ce".split()),
    "de": frozenset("der die das und ist sie ihr ihre wir unser zu von für mit nicht ein eine den dem "
                    "danke bitte auf ich".split()),
    "es": frozenset("el la los las y es usted su nosotros de del un una para en que por con no gracias "
                    "se lo al".split()),
    "it": frozenset("il lo la gli le e è lei suo noi di del un una per in che con non grazie sono al "
                    "della".split()),
    "pt": frozenset("o a os as e é você seu sua nós de do da um uma para em que com não obrigado "
                    "obrigada ao".split()),
    "nl": frozenset("de het een en is u uw wij ons van voor in dat met niet bedankt op te zijn".split()),
}
_WORD = re.compile(r"[^\W\d_]+", re.UNICODE)
_UKRAINIAN = set("іїєґІЇЄҐ")


def _script(char: str) -> str | None:
    """The script of a letter, from its Unicode name (``HIRAGANA LETTER A`` -> hiragana)."""
    code = ord(char)
    if 0x3040 <= code <= 0x30FF or 0x31F0 <= code <= 0x31FF or 0xFF66 <= code <= 0xFF9F:
        return "kana"
    if 0x3400 <= code <= 0x4DBF or 0x4E00 <= code <= 0x9FFF or 0xF900 <= code <= 0xFAFF or char == "々":
        return "han"
    if not char.isalpha():
        return None
    name = unicodedata.name(char, "")
    for script in ("LATIN", "CYRILLIC", "GREEK", "ARABIC", "HEBREW", "THAI", "DEVANAGARI", "HANGUL"):
        if name.startswith(script):
            return script.lower()
    return "other"


@dataclass(frozen=True)
class Detected:
    """A detection: the language code (None when undecided), the dominant script, its share.

    Attributes:
        code: A key of ``LANGUAGES``, or None (no letters, or a Latin text without telltale words).
        script: The dominant script: latin, kana+han (``cjk``), cyrillic, hangul, ...
        share: The dominant script's share of the letters, in [0, 1].
    """

    code: str | None
    script: str | None
    share: float

    @property
    def name(self) -> str:
        """A readable name for feedback: ``Japanese``, or ``Latin-script text``."""
        if self.code is not None:
            return LANGUAGES[self.code]
        return f"{self.script.capitalize()}-script text" if self.script else "text without letters"


def _latin_language(text: str) -> str | None:
    words = [w.lower() for w in _WORD.findall(text)]
    scores = {code: sum(w in stop for w in words) for code, stop in _STOPWORDS.items()}
    best = max(scores, key=scores.get)
    ranked = sorted(scores.values(), reverse=True)
    if ranked[0] == 0 or ranked[0] == ranked[1]:
        return None
    return best


def detect_language(text: str) -> Detected:
    """Detects the language of ``text`` from its letters' scripts.

    Japanese is kana with or without kanji; kanji alone is Chinese (a kanji-only Japanese
    phrase is reported as ``zh``, which :func:`language_matches` accepts for ``ja``).
    """
    scripts = Counter(s for s in map(_script, text) if s is not None)
    letters = sum(scripts.values())
    if not letters:
        return Detected(None, None, 0.0)
    cjk = scripts["kana"] + scripts["han"]
    if scripts["kana"] and cjk / letters >= 0.3:  # a Japanese sentence often carries Latin names
        return Detected("ja", "cjk", cjk / letters)
    script, count = max(((s, n) for s, n in scripts.items() if s != "kana"), key=lambda item: item[1],
                        default=("kana", 0))
    share = count / letters
    if script == "han":
        return Detected("zh", "cjk", share)
    if script == "cyrillic":
        return Detected("uk" if _UKRAINIAN & set(text) else "ru", script, share)
    if script == "latin":
        return Detected(_latin_language(text), script, share)
    return Detected(_SCRIPT_LANGUAGE.get(script), script, share)


def language_matches(text: str, code: str) -> tuple[bool, Detected]:
    """Whether ``text`` is in language ``code``, and what was detected.

    Undecided detections pass when the script fits (a two-word Latin reply has no telltale
    words), and kanji-only text passes for Japanese as well as Chinese.
    """
    found = detect_language(text)
    if found.code == code:
        return True, found
    if found.script is None:
        return True, found  # nothing to judge: digits and punctuation only
    if code == "ja" and found.code == "zh":
        return True, found
    expected_latin = code in _STOPWORDS
    return (found.code is None and expected_latin and found.script == "latin"), found
