import pytest

from metrics import LabelMatch, LengthBounds, SqlResultMatch, Verdict, validators_for
from metrics.validators import count_words
from programs import Classifier, CodeGen, Writer
from programs.builtin import demo_database


@pytest.fixture
def classifier():
    return Classifier("message", output="category", labels=["billing", "refund"])


def test_label_match(classifier):
    check = LabelMatch()
    expected = Verdict(1.0, True, "", {"expected": "billing", "got": "billing"})
    assert check("billing", gold="billing", node=classifier) == expected
    wrong = check("refund", gold="billing", node=classifier)
    assert (wrong.score, wrong.passed, wrong.feedback) == (0.0, False, "label 'billing' expected, got 'refund'.")
    outside = check("spam", gold="billing", node=classifier)
    assert not outside.passed and "valid labels: billing, refund" in outside.feedback


def test_length_bounds_feedback_is_specific():
    check = LengthBounds(min_words=2, max_words=5, max_sentences=1)
    assert check("Thanks, we will fix it.").passed
    verdict = check("One two three four five six. Seven.")
    assert verdict.feedback == "text is 7 words, limit 5. text is 2 sentences, limit 1."
    assert check("  ").feedback == "the text is empty; write a reply."


def test_japanese_words_are_counted_by_characters():
    assert count_words("ご注文ありがとうございます。") == 7
    assert count_words("order 123 は東京へ") == 4
    assert LengthBounds(min_words=5).__call__("ご注文ありがとうございます。明日発送します。").passed


def test_sql_result_match_executes_both_queries():
    node = CodeGen("question", database=str(demo_database()))
    check = SqlResultMatch()
    gold = "select count(*) from orders"
    assert check("SELECT COUNT(*) AS n FROM orders", gold=gold, node=node).passed
    wrong = check("select count(*) from orders where status = 'shipped'", gold=gold, node=node)
    assert not wrong.passed and "missing rows" in wrong.feedback
    broken = check("select amount from orders", gold=gold, node=node)
    assert not broken.passed and broken.feedback.startswith("the SQL failed:") and "amount" in broken.feedback
    columns = check("select count(*), 1 from orders", gold=gold, node=node)
    assert "2 column(s)" in columns.feedback


def test_sql_order_matters_only_when_gold_orders():
    node = CodeGen("question", database=str(demo_database()))
    check = SqlResultMatch()
    assert check("select * from range(3) order by 1 desc", gold="select * from range(3)", node=node).passed
    reordered = check("select * from range(3) order by 1 desc", gold="select * from range(3) order by 1", node=node)
    assert not reordered.passed and "wrong order" in reordered.feedback


def test_validators_for_each_kind(classifier):
    assert [type(v) for v in validators_for(classifier)] == [LabelMatch]
    extra = object()
    writer = Writer("q", rules={"max_words": 9}, validators=[extra])
    checks = validators_for(writer)
    assert checks[0] == LengthBounds(max_words=9) and checks[1] is extra
    assert [type(v) for v in validators_for(CodeGen("q"))] == [SqlResultMatch]
