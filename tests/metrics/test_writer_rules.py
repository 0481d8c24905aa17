import pytest

from metrics.writer_rules import GENERIC_PROSE, Format, Language, LengthBounds, Phrases, count_words


def test_length_feedback_names_the_measure_and_the_limit():
    verdict = LengthBounds(max_words=3, min_chars=50, min_sentences=2)("One two three four.")
    assert verdict.feedback == ("text is 4 words, limit 3. text is 19 characters, minimum 50. "
                                "text is 1 sentences, minimum 2.")
    assert verdict.score == 0.0 and verdict.details == {"words": 4, "chars": 19, "sentences": 1}


def test_japanese_length_counts_characters_in_pairs():
    assert count_words("ご注文ありがとうございます。") == 7
    assert LengthBounds(max_words=6)("ご注文ありがとうございます。").feedback == "text is 7 words, limit 6."


def test_banned_phrases_are_case_insensitive_whole_words():
    check = Phrases(banned=GENERIC_PROSE)
    assert check("Let us DELVE into your order.").feedback == "remove the banned phrase 'delve' (generic LLM prose)."
    assert check("The shelves delivered fine.").passed  # 'delve' inside words does not count
    assert "'it is important to note'" in check("It is  important to\nnote that it ships.").feedback
    both = Phrases(banned=("refund", "crucial"))("A crucial refund.")
    assert both.feedback == "remove the banned phrases 'refund', 'crucial'." and both.details["banned_found"]


def test_required_phrases_and_japanese_phrases():
    check = Phrases(required=("order number", "発送"))
    assert check("Your order number is 5; 本日発送します。").passed
    assert check("Your order is 5.").feedback == "include the required phrases 'order number', '発送'."


def test_language_rule():
    check = Language("ja")
    assert check("ご注文ありがとうございます。").passed
    verdict = check("Thank you for your order.")
    assert verdict.feedback == "the text is in English, expected Japanese (ja); write it in Japanese."
    assert Language("en")("注文").feedback.startswith("the text is in Chinese, expected English (en)")


def test_json_format():
    assert Format("json")('{"a": 1}').passed
    verdict = Format("json")('```json\n{"a": 1}\n```')
    assert verdict.feedback.startswith("the text is not valid JSON: Expecting value at line 1 column 1.")
    assert "Remove the ``` fence" in verdict.feedback


def test_markdown_format():
    assert Format("markdown")("# Title\n\n- item\n\n```py\nx = 1\n```\n").passed
    verdict = Format("markdown")("#Title\n```\ncode")
    assert "the heading '#Title' needs a space after '#'" in verdict.feedback
    assert "the ``` code fence opened on line 2 is never closed" in verdict.feedback
    table = Format("markdown")("| a | b |\n|---|---|\n| 1 | 2 | 3 |")
    assert "different numbers of columns" in table.feedback


@pytest.mark.parametrize("text, what", [
    ("## Summary\nAll good.", "a heading on line 1"),
    ("Fine.\n- one\n- two", "a bullet list on line 2"),
    ("This is **very** good.", "bold markup on line 1"),
    ("See [the docs](https://x.y).", "a link on line 1"),
    ("<b>hi</b>", "an HTML tag on line 1"),
])
def test_plain_text_has_no_markup(text, what):
    verdict = Format("text")(text)
    assert not verdict.passed and f"({what}:" in verdict.feedback and verdict.feedback.endswith("write plain text.")


def test_plain_text_passes():
    assert Format("text")("Thanks! Your order #12 ships today - around 3 pm.").passed
    assert Format("text")("ご注文ありがとうございます。").passed
