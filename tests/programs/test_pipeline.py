import dspy
import pytest

from programs import Classifier, Pipeline, PipelineError, Writer
from programs.builtin import Triage


class Two(Pipeline):
    inputs = ("message",)
    gold = {"classify": "label"}
    weights = {"classify": 2.0}

    def __init__(self):
        super().__init__()
        self.classify = Classifier("message", labels=["a", "b"])
        self.write = Writer("message, label", output="text")

    def forward(self, message):
        label = self.classify(message=message).label
        return dspy.Prediction(label=label, text=self.write(message=message, label=label).text)


def test_node_names_are_attribute_names_as_dspy_reports_them():
    pipeline = Two()
    assert list(pipeline.nodes()) == ["classify", "write"]
    assert [name for name, _ in pipeline.named_predictors()] == ["classify", "write"]


def test_required_fields_and_weights():
    pipeline = Two()
    pipeline.check_declaration()
    assert pipeline.required_fields() == ("message", "label")
    assert pipeline.weight("classify") == 2.0
    assert pipeline.weight("write") == 1.0


def test_declaration_errors_name_the_problem():
    class NoNodes(Pipeline):
        inputs = ("x",)

    with pytest.raises(PipelineError, match="declares no nodes"):
        NoNodes().check_declaration()

    class BadGold(Two):
        gold = {"clasify": "label"}

    with pytest.raises(PipelineError, match=r"gold names unknown node\(s\) \['clasify'\]"):
        BadGold().check_declaration()


def test_deepcopy_keeps_node_kinds_and_rules():
    copy = Triage().deepcopy()
    assert copy.reply.kind == "writer" and copy.reply.rules["max_words"] == 60
    assert copy.classify.labels == Triage().classify.labels
