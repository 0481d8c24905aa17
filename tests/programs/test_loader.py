import textwrap

import pytest

from programs import PipelineError, load_pipeline_class, make_pipeline
from programs.builtin import SqlQA, Triage

USER_PIPELINE = textwrap.dedent('''
    import dspy
    from programs import Classifier, Pipeline

    class Mine(Pipeline):
        inputs = ("text",)
        gold = {"sentiment": "label"}

        def __init__(self):
            super().__init__()
            self.sentiment = Classifier("text", labels=["pos", "neg"])

        def forward(self, text):
            return dspy.Prediction(label=self.sentiment(text=text).label)

    class NotAPipeline:
        pass
''')


def test_builtins_by_name():
    assert load_pipeline_class("triage") is Triage
    assert load_pipeline_class("sql") is SqlQA


def test_unknown_builtin_suggests_the_closest():
    with pytest.raises(PipelineError, match=r"unknown pipeline 'triag'\. Did you mean 'triage'"):
        load_pipeline_class("triag")


def test_user_file(tmp_path):
    path = tmp_path / "my_pipeline.py"
    path.write_text(USER_PIPELINE)
    pipeline = make_pipeline(f"{path}:Mine")
    assert list(pipeline.nodes()) == ["sentiment"]


@pytest.mark.parametrize("suffix, message", [
    (":Missing", "no class 'Missing'; pipelines in the file: \\['Mine'\\]"),
    (":NotAPipeline", "is not a subclass of programs.Pipeline"),
])
def test_user_file_errors(tmp_path, suffix, message):
    path = tmp_path / "my_pipeline.py"
    path.write_text(USER_PIPELINE)
    with pytest.raises(PipelineError, match=message):
        load_pipeline_class(f"{path}{suffix}")


def test_missing_file_and_import_error(tmp_path):
    with pytest.raises(PipelineError, match="pipeline file not found"):
        load_pipeline_class(f"{tmp_path}/nope.py:X")
    broken = tmp_path / "broken.py"
    broken.write_text("raise RuntimeError('boom')\n")
    with pytest.raises(PipelineError, match="import failed: RuntimeError: boom"):
        load_pipeline_class(f"{broken}:X")
