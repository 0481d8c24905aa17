"""knn's ``nodes`` setting: retrieval (and the classifier/SQL settings) for the named nodes only;
every other node keeps its prompt, demos and settings; bad names are refused before a run."""

import json

import dspy
import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from experiments.cli import cli
from experiments.compile import CompileOptions, compile_pipeline
from metrics import PipelineMetric
from optimizers import RetrievalFewShot, prepare_optimizer
from programs import Classifier, ConfigError, Pipeline, Writer
from programs.builtin import Triage
from tests.fakes import fake_lm, triage_respond
from tests.fakes import message_text as text


def user_turns(request):
    return [text(m) for m in request.messages if m.role == "user"]


FIXED_REPLY_DEMO = dspy.Example(message="My parcel is late.", category="shipping",
                                reply="Sorry about the delay: your parcel ships today, tracking follows by mail.")


def student_with_fixed_reply_demo():
    student = Triage()
    student.reply.demos = [FIXED_REPLY_DEMO]
    return student


@pytest.mark.parametrize("nodes", ["classify", ["classify"], " classify , "])
def test_only_the_named_node_retrieves_and_the_other_keeps_its_demos(split, nodes):
    train, val = split
    lm, engine = fake_lm(triage_respond)
    knn = RetrievalFewShot(PipelineMetric(Triage()), nodes=nodes, k=4, embedding="hash", max_lm_calls=0)
    program = knn.compile(student_with_fixed_reply_demo(), trainset=train, valset=val)
    assert program.classify.retrieval is not None and program.classify.retrieval.k == 4
    assert program.reply.retrieval is None
    assert program.reply.demos == [FIXED_REPLY_DEMO]
    assert knn.chosen["nodes"] == ["classify"] and knn.chosen["pool_sizes"] == {"classify": len(train)}
    with dspy.context(lm=lm.lm, adapter=lm.adapter):
        program(message=val[0].message)
    classify_request, reply_request = engine.requests
    assert len(user_turns(classify_request)) == 4 + 1  # four retrieved demos, then the query
    reply_turns = user_turns(reply_request)
    assert len(reply_turns) == 1 + 1 and FIXED_REPLY_DEMO.message in reply_turns[0]  # its own demo, unchanged


def test_naming_every_node_is_the_default(split):
    train, _ = split
    named = RetrievalFewShot(nodes="classify,reply", max_lm_calls=0).compile(Triage(), trainset=train)
    default = RetrievalFewShot(max_lm_calls=0).compile(Triage(), trainset=train)
    for program in (named, default):
        assert program.classify.retrieval is not None and program.reply.retrieval is not None
    assert named.classify.retrieval.demos == default.classify.retrieval.demos
    assert named.reply.retrieval.demos == default.reply.retrieval.demos


def test_a_saved_program_keeps_the_split(split, tmp_path):
    train, _ = split
    program = RetrievalFewShot(nodes="reply", max_lm_calls=0).compile(Triage(), trainset=train)
    path = tmp_path / "p.json"
    program.save(str(path))
    loaded = Triage()
    loaded.load(str(path))
    assert loaded.classify.retrieval is None and loaded.classify.demos == []
    assert loaded.reply.retrieval is not None and len(loaded.reply.retrieval.demos) == len(train)


def test_classifier_and_sql_settings_reach_only_the_named_nodes(split):
    from programs.builtin import SqlQA

    train, _ = split
    program = RetrievalFewShot(nodes="reply", mode="vote", max_lm_calls=0).compile(Triage(), trainset=train)
    assert program.classify.mode == "lm"  # not named: its setting is left as declared
    sql_train = [dspy.Example(question="how many customers?", sql="SELECT count(*) FROM customers",
                              answer="There are 12 customers.").with_inputs("question")]
    sql = RetrievalFewShot(nodes="answer", repair=True, samples=2, max_lm_calls=0).compile(SqlQA(),
                                                                                         trainset=sql_train)
    assert (sql.generate.repair, sql.generate.samples, sql.generate.retrieval) == (False, 1, None)
    assert sql.answer.retrieval is not None


class HalfGold(Pipeline):
    inputs = ("message",)
    gold = {"classify": "category"}

    def __init__(self):
        super().__init__()
        self.classify = Classifier("message", output="category", labels=("a", "b"))
        self.note = Writer("message, category", output="note")

    def forward(self, message):
        category = self.classify(message=message).category
        return dspy.Prediction(category=category, note=self.note(message=message, category=category).note)


@pytest.mark.parametrize(("nodes", "expected"), [
    ("clasify", "'clasify' is not a node of Triage; knn can compile classify, reply"),
    ("", "nodes is empty"),
    (3, "nodes must name nodes"),
])
def test_bad_names_are_refused_when_the_optimizer_is_built(nodes, expected):
    with pytest.raises(ConfigError, match=expected):
        prepare_optimizer("knn", PipelineMetric(Triage()), {"nodes": nodes})


def test_a_node_without_a_gold_field_is_refused(split):
    train, _ = split
    with pytest.raises(ConfigError, match="'note' has no gold field of HalfGold; knn can compile classify"):
        RetrievalFewShot(PipelineMetric(HalfGold()), nodes="note")
    with pytest.raises(ConfigError, match="'note' has no gold field"):  # no metric: refused at compile
        RetrievalFewShot(nodes="classify,note", max_lm_calls=0).compile(HalfGold(), trainset=train)


def test_a_compile_records_the_nodes_and_a_bad_name_leaves_no_run():
    lm, _ = fake_lm(triage_respond)
    result = compile_pipeline(CompileOptions("triage", "knn", lm=lm, params=["nodes=classify", "max_lm_calls=0"],
                                             progress=False))
    params = MlflowClient().get_run(result["run_id"]).data.params
    assert params["optimizer.settings.init.nodes"] == "classify"
    assert json.loads(params["optimizer.chosen.nodes"]) == ["classify"]
    assert result["compiled"]["lm_calls"] == 2 * result["valset"]["size"]
    runs = MlflowClient().search_runs([e.experiment_id for e in MlflowClient().search_experiments()])
    bad = CliRunner().invoke(cli, ["compile", "triage", "-o", "knn", "-p", "nodes=replies"])
    assert bad.exit_code == 2
    errors = [line for line in bad.output.splitlines() if line.startswith("Error:")]
    assert errors == ["Error: --param nodes: 'replies' is not a node of Triage; knn can compile classify, reply"]
    after = MlflowClient().search_runs([e.experiment_id for e in MlflowClient().search_experiments()])
    assert len(after) == len(runs)
