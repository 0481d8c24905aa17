"""--optimizer knn on the scripted LM: per-node pools, one LM call per node per query, tuning within
its budget, the choices recorded, and a saved program that works in a fresh process."""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import dspy
import pytest
from dspy.lm15 import Message, TextPart
from mlflow.tracking import MlflowClient

from experiments.compile import CompileOptions, compile_pipeline
from experiments.evaluate import evaluate_program, lm_usage
from metrics import PipelineMetric
from optimizers import RetrievalFewShot, prepare_optimizer
from programs import ConfigError, PipelineError
from programs.builtin import Triage
from tests.fakes import ScriptedEngine, fake_lm, triage_respond
from tests.fakes import message_text as text

REPO = Path(__file__).resolve().parents[2]


def demo_messages(request):
    """The demo inputs of one request, in prompt order (the user turns before the query's)."""
    return [text(m) for m in request.messages[:-1] if m.role == "user"]


def compiled_triage(train, val, lm, **settings):
    knn = RetrievalFewShot(PipelineMetric(Triage()), **settings)
    with dspy.context(lm=lm.lm, adapter=lm.adapter):
        program = knn.compile(Triage(), trainset=train, valset=val)
    return knn, program


def test_each_node_gets_its_own_pool_and_the_student_is_untouched(split):
    train, val = split
    train = [*train, dspy.Example(message="Where is my order?", category="shipping").with_inputs("message")]
    student = Triage()
    knn = RetrievalFewShot(PipelineMetric(student), max_lm_calls=0)
    program = knn.compile(student, trainset=train, valset=val)
    assert student.classify.retrieval is None and student.reply.retrieval is None
    classify, reply = program.classify.retrieval, program.reply.retrieval
    # The example without a reply is in the classifier's pool only.
    assert len(classify.demos) == len(train) and len(reply.demos) == len(train) - 1
    assert all(set(d) == {"message", "category"} for d in classify.demos)
    assert all(set(d) == {"message", "category", "reply"} for d in reply.demos)
    assert classify.query_fields == ("message",) and reply.query_fields == ("message", "category")
    assert classify.label_field == "category" and reply.label_field is None
    assert knn.chosen["pool_sizes"] == {"classify": len(train), "reply": len(train) - 1}
    assert knn.chosen["candidates"] == 0 and knn.chosen["embedding"] == "hash" and knn.chosen["k"] == 8


def test_one_lm_call_per_node_per_query_with_the_nearest_demos(split):
    train, val = split
    lm, engine = fake_lm(triage_respond)
    _, program = compiled_triage(train, val, lm, embedding="hash", max_lm_calls=60)
    metric = PipelineMetric(Triage())
    with dspy.context(lm=lm.lm, adapter=lm.adapter):
        for example in val[:5]:
            before = len(engine.requests)
            program(**example.inputs())
            assert len(engine.requests) - before == 2  # classify, then reply: one call each
        report = evaluate_program(program, val, metric, progress=False)
        # A query that is a trainset message finds itself: it is the last (nearest) demo.
        target = train[3]
        before = len(engine.requests)
        program(message=target.message)
    assert report.usage.calls == 2 * len(val) and report.errors == 0
    classify_request = engine.requests[before]
    demos = demo_messages(classify_request)
    assert len(demos) == program.classify.retrieval.k
    assert target.message in demos[-1]


class DemoCopier(ScriptedEngine):
    """Answers the classifier with the category of the first (or last) demo in the prompt."""

    def __init__(self, position):
        super().__init__(triage_respond)
        self.position = position

    def complete(self, request):
        response = super().complete(request)
        answers = [json.loads(text(m)) for m in request.messages[:-1] if m.role == "assistant"]
        answers = [a for a in answers if "category" in a and "reply" not in a]
        if answers:
            chosen = answers[self.position]["category"]
            message = Message.assistant([TextPart(json.dumps({"category": chosen}))])
            response = dataclasses.replace(response, message=message)
        return response


@pytest.mark.parametrize(("position", "expected"), [(0, "nearest_first"), (-1, "nearest_last")])
def test_tuning_finds_the_order_the_lm_rewards(split, position, expected):
    train, val = split
    engine = DemoCopier(position)
    lm = dspy.LM("fake/scripted", engine=engine, cache=False, temperature=0.0)
    knn = RetrievalFewShot(PipelineMetric(Triage()), embedding="hash", k=8, balance=False, max_lm_calls=400)
    with dspy.context(lm=lm, adapter=dspy.JSONAdapter()):
        knn.compile(Triage(), trainset=train, valset=val)
    assert knn.chosen["order"] == expected
    assert knn.chosen["candidates"] == 2 and knn.chosen["val_score"] > 0


@pytest.mark.parametrize("budget", [0, 30, 100])
def test_tuning_stays_within_its_lm_call_budget(split, budget):
    train, val = split
    lm, _ = fake_lm(triage_respond)
    with lm_usage() as usage:
        knn, _ = compiled_triage(train, val, lm, embedding="hash", max_lm_calls=budget)
    assert usage.calls <= budget and knn.chosen["lm_calls_planned"] <= budget
    assert usage.calls == knn.chosen["lm_calls_planned"]
    assert (knn.chosen["candidates"] > 0) == (budget > 0)


def test_wrong_students_trainsets_and_settings_are_refused(split):
    train, _ = split
    with pytest.raises(PipelineError, match="pipec Pipelines"):
        RetrievalFewShot().compile(dspy.Predict("q -> a"), trainset=train)
    bare = [dspy.Example(message="hi").with_inputs("message")]
    with pytest.raises(PipelineError, match="gold field"):
        RetrievalFewShot().compile(Triage(), trainset=bare)
    for settings in ({"k": 0}, {"order": "shuffled"}, {"embedding": "nope"}, {"max_lm_calls": -1}):
        with pytest.raises(ConfigError):
            RetrievalFewShot(**settings)


SUBPROCESS = """
import json, sys
import dspy
dspy.configure_cache(enable_disk_cache=False, enable_memory_cache=False)
from programs.builtin import Triage
from tests.fakes import fake_lm, triage_respond
from tests.fakes import message_text as text
program = Triage()
program.load(sys.argv[1])
lm, engine = fake_lm(triage_respond)
with dspy.context(lm=lm.lm, adapter=lm.adapter):
    prediction = program(message=sys.argv[2])
print(json.dumps({"calls": len(engine.requests), "category": prediction.category,
                  "messages": [[m.text() if callable(m.text) else m.text for m in r.messages]
                               for r in engine.requests]}, ensure_ascii=False))
"""


def test_a_saved_program_answers_with_the_same_demos_in_a_fresh_process(split, tmp_path):
    train, val = split
    japanese = [dspy.Example(message=m, category=c, reply=r).with_inputs("message") for m, c, r in (
        ("荷物がまだ届きません。追跡番号を教えてください。", "shipping", "追跡番号をメールでお送りしました。"),
        ("パスワードを忘れてログインできません。", "account", "再設定用のリンクをお送りしました。"),
    )]
    lm, engine = fake_lm(triage_respond)
    _, program = compiled_triage([*train, *japanese], val, lm, embedding="hash", max_lm_calls=0)
    path = tmp_path / "knn.json"
    program.save(str(path))
    assert "荷物がまだ届きません" in path.read_text(encoding="utf-8")
    query = "荷物がまだ届きません。追跡番号は？"
    with dspy.context(lm=lm.lm, adapter=lm.adapter):
        prediction = program(message=query)
    here = [[text(m) for m in r.messages] for r in engine.requests]
    done = subprocess.run([sys.executable, "-c", SUBPROCESS, str(path), query], capture_output=True, text=True,
                          cwd=REPO, encoding="utf-8")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    there = json.loads(out)
    assert there["calls"] == 2 and there["category"] == prediction.category
    assert there["messages"] == here
    assert "荷物がまだ届きません" in here[0][-3]  # the nearest demo, in Japanese, right before the query


def test_the_registry_builds_it_with_pipec_defaults():
    prepared = prepare_optimizer("knn", PipelineMetric(Triage()), {"k": 4}, seed=5, threads=3)
    assert isinstance(prepared.teleprompter, RetrievalFewShot) and prepared.uses_valset
    assert prepared.teleprompter.k == 4 and prepared.teleprompter.seed == 5
    assert prepared.teleprompter.num_threads == 3
    assert prepared.settings["init.k"] == 4 and prepared.settings["init.max_lm_calls"] == 300


def test_a_compile_run_records_the_settings_and_the_choices():
    lm, _ = fake_lm(triage_respond)
    result = compile_pipeline(CompileOptions("triage", "knn", lm=lm, params=["max_lm_calls=80", "embedding=hash"],
                                             progress=False))
    params = MlflowClient().get_run(result["run_id"]).data.params
    assert params["optimizer"] == "knn" and params["optimizer.settings.init.max_lm_calls"] == "80"
    for key in ("k", "embedding", "order", "balance", "val_score", "candidates", "pool_sizes.classify"):
        assert f"optimizer.chosen.{key}" in params, key
    assert result["compile"]["lm_calls"] <= 80
    assert result["compiled"]["lm_calls"] == 2 * result["valset"]["size"]
    loaded = Triage()
    loaded.load(result["program_path"])
    assert loaded.classify.retrieval.k == int(params["optimizer.chosen.k"])


def test_pool_store_is_saved_with_each_node_and_checked(split, tmp_path):
    train, _ = split
    prepared = prepare_optimizer("knn", PipelineMetric(Triage()), {"pool": "store", "max_lm_calls": 0})
    program = prepared.teleprompter.compile(Triage(), trainset=train)
    assert {node.retrieval.pool for node in program.nodes().values()} == {"store"}
    program.save(str(tmp_path / "p.json"))
    loaded = Triage()
    loaded.load(str(tmp_path / "p.json"))
    assert loaded.classify.retrieval.pool == "store"  # pipec run turns live demos on for it
    default = RetrievalFewShot(max_lm_calls=0).compile(Triage(), trainset=train)
    assert default.classify.retrieval.pool == "trainset"
    with pytest.raises(ConfigError, match="unknown pool 'db': choose one of trainset, store"):
        prepare_optimizer("knn", PipelineMetric(Triage()), {"pool": "db"})


def test_classifier_and_sql_settings_are_applied_fixed_or_tuned(split, tmp_path):
    from programs.builtin import SqlQA

    train, val = split
    lm, _ = fake_lm(triage_respond)
    knn, program = compiled_triage(train, val, lm, narrow="auto", mode="vote", k=4, embedding="hash",
                                   order="nearest_last", balance=False, max_lm_calls=200)
    assert program.classify.mode == "vote" and knn.chosen["mode"] == "vote"
    assert program.classify.narrow in (None, 4, 2) and "narrow" in knn.chosen
    path = tmp_path / "triage.json"
    program.save(str(path))
    loaded = Triage()
    loaded.load(str(path))
    assert (loaded.classify.mode, loaded.classify.narrow) == ("vote", program.classify.narrow)
    sql = RetrievalFewShot(max_lm_calls=0, repair=True, samples=2, grammar=True).compile(
        SqlQA(), trainset=[dspy.Example(question="how many customers?", sql="SELECT count(*) FROM customers")
                           .with_inputs("question")])
    assert (sql.generate.repair, sql.generate.samples, sql.generate.grammar) == (True, 2, True)
    assert sql.generate.retrieval.query_fields == ("question",)  # the schema is not in the pool
    with pytest.raises(ConfigError, match="narrow"):
        RetrievalFewShot(narrow=0)
    with pytest.raises(ConfigError, match="mode"):
        RetrievalFewShot(mode="guess")
