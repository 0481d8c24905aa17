from typing import Literal, get_args

import dspy
import pytest

from programs import Classifier, CodeGen, PipelineError, Writer


def test_classifier_output_type_is_its_label_set():
    node = Classifier("message", output="category", labels=["billing", "refund", "billing"])
    assert node.kind == "classifier"
    assert node.labels == ("billing", "refund")  # duplicates dropped, order kept
    annotation = node.signature.output_fields["category"].annotation
    assert annotation == Literal["billing", "refund"]
    assert get_args(annotation) == node.labels


def test_classifier_needs_two_labels():
    with pytest.raises(PipelineError, match="at least two labels"):
        Classifier("message", labels=["only"])


def test_node_is_a_predictor_with_one_output_field():
    node = Writer({"message": "the message", "category": "the team"}, output="reply")
    assert isinstance(node, dspy.Predict)
    assert node.output_field == "reply"
    assert node.input_fields == ("message", "category")
    assert node.signature.input_fields["message"].json_schema_extra["desc"] == "the message"


def test_writer_word_limit_bounds_generation():
    assert Writer("q", rules={"max_words": 10}).config["max_tokens"] == 62
    assert Writer("q", rules={"max_words": 10}, max_tokens=5).config["max_tokens"] == 5
    assert "max_tokens" not in Writer("q").config


def test_codegen_carries_dialect_and_database():
    node = CodeGen("question, db_schema", database="/tmp/x.duckdb")
    assert (node.kind, node.dialect, node.database, node.output_field) == ("codegen", "duckdb", "/tmp/x.duckdb", "sql")
    with pytest.raises(PipelineError, match="dialect"):
        CodeGen("question", dialect="postgres")


@pytest.mark.parametrize("inputs, output, message", [
    ("", "x", "at least one input"),
    ("bad name", "x", "not a Python identifier"),
    ("a", "a", "distinct from the inputs"),
    ("question, schema", "sql", "'schema' clashes with an attribute of dspy.Signature"),
])
def test_bad_field_names_are_pipeline_errors(inputs, output, message):
    with pytest.raises(PipelineError, match=message):
        Writer(inputs, output=output)
