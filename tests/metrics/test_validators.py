import pytest

from metrics import LabelMatch, LengthBounds, LLMJudge, PipelineMetric, SqlResultMatch, Verdict, validators_for
from metrics.validators import count_words
from metrics.writer_rules import GENERIC_PROSE, Format, Language, Phrases
from programs import Classifier, CodeGen, Pipeline, PipelineError, Writer
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


def test_writer_rules_build_their_checks():
    writer = Writer("q", rules={"max_words": 50, "banned_phrases": True, "required_phrases": "order",
                                "language": "ja", "format": "text", "rubric": "Polite and concrete."})
    checks = validators_for(writer)
    assert [type(c) for c in checks] == [LengthBounds, Phrases, Language, Format, LLMJudge]
    assert checks[1] == Phrases(required=("order",), banned=GENERIC_PROSE) and checks[2] == Language("ja")
    assert checks[4].mode == "score" and checks[4].retries == 2


def test_codegen_rules():
    (check,) = validators_for(CodeGen("q", rules={"timeout": 2, "max_rows": 10}))
    assert (check.timeout, check.max_rows) == (2.0, 10)


@pytest.mark.parametrize("node, message", [
    (Writer("q", rules={"max_word": 5}), "unknown rule 'max_word' for a writer node. Did you mean 'max_words'? "
                                         "Valid rules: min_words, max_words"),
    (Classifier("q", labels=["a", "b"], rules={"language": "en"}), "Valid rules: none"),
    (CodeGen("q", rules={"timeout": -1}), "rule timeout must be a number of seconds > 0"),
    (Writer("q", rules={"language": "klingon"}), "rule language='klingon' is not supported; use one of: ja,"),
    (Writer("q", rules={"format": "yaml"}), "rule format='yaml' is not one of: json, markdown, text"),
    (Writer("q", rules={"min_words": 9, "max_words": 3}), "rule min_words=9 is above max_words=3"),
    (Writer("q", rules={"min_chars": "ten"}), "rule 'min_chars' must be a whole number >= 0"),
    (Writer("q", rules={"judge_mode": "binary"}), "'judge_mode' configures the LLM judge, which needs a 'rubric'"),
    (Writer("q", rules={"rubric": "x", "judge_mode": "stars"}), "judge_mode='stars' is not one of: score, binary"),
    (Writer("q", rules={"required_phrases": []}), "rule 'required_phrases' is an empty list"),
])
def test_bad_rules_fail_when_the_metric_is_built(node, message):
    with pytest.raises(PipelineError) as raised:
        validators_for(node)
    assert message in str(raised.value)


def test_the_metric_names_the_node_with_bad_rules():
    class Bad(Pipeline):
        inputs = ("q",)

        def __init__(self):
            super().__init__()
            self.summary = Writer("q", output="summary", rules={"max_wrds": 5})

    with pytest.raises(PipelineError, match=r"^Bad.summary: unknown rule 'max_wrds'"):
        PipelineMetric(Bad())
