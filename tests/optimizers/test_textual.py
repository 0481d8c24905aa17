"""What every textual-feedback optimizer shares, on the scripted LM: the budget is never exceeded
(counted on the engine), the result never scores below the student on the valset, the student is
not changed, candidates are evaluated as dspy.Evaluate calls that say who they are, and the node
whose validators fail most is rewritten first."""

import dspy
import pytest
from dspy.utils.callback import BaseCallback

from metrics import PipelineMetric
from optimizers import APE, OPRO, EvoPrompt, FeedbackRewrite, HumanFeedback, ProTeGi, QueryAware
from optimizers.textual import clean_instruction, instruction_diff
from programs import PipelineError
from programs.builtin import Triage
from tests.fakes import triage_respond
from tests.optimizers.scripted import run, scripted_lm, triage_split

ALL = {
    "protegi": lambda m, **kw: ProTeGi(m, **kw),
    "opro": lambda m, **kw: OPRO(m, **kw),
    "ape": lambda m, **kw: APE(m, **kw),
    "evoprompt": lambda m, **kw: EvoPrompt(m, **kw),
    "evoprompt-de": lambda m, **kw: EvoPrompt(m, variant="de", **kw),
    "feedback": lambda m, **kw: FeedbackRewrite(m, **kw),
    "human": lambda m, **kw: HumanFeedback(m, notes=None, reviews=lambda: [{"node": "classify", "comment": "be GOOD",
                                                                            "passed": False}], accept="all", **kw),
    "query-aware": lambda m, **kw: QueryAware(m, **kw),
}


@pytest.fixture(scope="module")
def split():
    train, val = triage_split()
    return train, val[:8]


@pytest.mark.parametrize("budget", [0, 9, 23, 60])
@pytest.mark.parametrize("name", sorted(ALL))
def test_the_budget_is_never_exceeded(split, name, budget):
    train, val = split
    lm, engine, _ = scripted_lm()
    optimizer = ALL[name](PipelineMetric(Triage()), max_lm_calls=budget, val_size=4)
    program = run(optimizer, lm, train, val)
    assert len(engine.requests) <= budget
    assert optimizer.budget.calls == len(engine.requests)
    assert isinstance(program, Triage)
    if budget == 0:
        assert optimizer.chosen["stopped"].startswith("budget") and optimizer.chosen["best"]["id"] == "c0"


@pytest.mark.parametrize("name", sorted(ALL))
def test_never_below_the_student_on_the_valset(split, name):
    """Every proposal makes the classifier worse: the original comes back, unchanged."""
    train, val = split
    lm, _, script = scripted_lm()
    script.writer = {f: "BAD: answer technical for everything" for f in
                     ("improved_instruction", "paraphrase", "new_instruction", "instruction", "final_instruction")}
    student = Triage()
    before = student.dump_state()
    optimizer = ALL[name](PipelineMetric(Triage()), max_lm_calls=120, val_size=0)
    program = run(optimizer, lm, train, val, student=student)
    assert student.dump_state() == before  # never mutated
    assert program.classify.signature.instructions == student.classify.signature.instructions
    assert getattr(program.classify, "query_prompt", None) is None
    assert optimizer.chosen["best"]["id"] == "c0"


class Recorder(BaseCallback):
    def __init__(self):
        self.metadata = []

    def on_evaluate_start(self, call_id, instance, inputs):
        self.metadata.append(dict(inputs.get("callback_metadata") or {}))


def test_candidates_are_evaluations_that_name_themselves(split):
    train, val = split
    lm, _, script = scripted_lm()
    script.writer = {"improved_instruction": "GOOD: classify by what the customer needs done."}
    recorder = Recorder()
    optimizer = ProTeGi(PipelineMetric(Triage()), steps=1, max_lm_calls=300, val_size=0, nodes="classify")
    with dspy.context(callbacks=[recorder]):
        run(optimizer, lm, train, val)
    keys = {m["metric_key"] for m in recorder.metadata}
    assert {"protegi.candidate", "protegi.minibatch", "protegi.pull"} <= keys
    candidates = [m for m in recorder.metadata if m["metric_key"] == "protegi.candidate"]
    assert candidates[0]["pipec.candidate"] == "c0" and candidates[0]["pipec.parent"] == ""
    edits = [m for m in candidates if m["pipec.origin"] == "edit"]
    assert edits and all(m["pipec.parent"] == "c0" and m["pipec.step"] == 1 for m in edits)
    # best_score by candidate: never decreasing, and it rose when the GOOD instruction came in
    scores = [score for _, score in optimizer.trajectory]
    assert scores == sorted(scores) and scores[-1] > scores[0]
    assert [step for step, _ in optimizer.trajectory] == list(range(len(scores)))


def test_confirms_a_sample_winner_on_the_whole_valset(split):
    """Scored on a sample of 3, the winner is checked against the original on the other 5."""
    train, val = triage_split()
    wrong = [e for e in val if triage_respond(("category",), {"message": e.message})["category"] != e.category]
    val = wrong[:6] + [e for e in val if e not in wrong][:2]  # any 3 of them hold a failure
    lm, _, script = scripted_lm()
    script.writer = {"new_instruction": "GOOD: read the whole message, then pick the team."}
    recorder = Recorder()
    optimizer = OPRO(PipelineMetric(Triage()), steps=1, candidates_per_step=1, max_lm_calls=200, val_size=3,
                     nodes="classify")
    with dspy.context(callbacks=[recorder]):
        program = run(optimizer, lm, train, val)
    assert "GOOD" in program.classify.signature.instructions
    assert len(optimizer.scoring_set) == 3
    confirms = [m for m in recorder.metadata if m["metric_key"] == "opro.confirm"]
    assert [m["pipec.candidate"] for m in confirms] == ["c0", "c1"]


def failures_per_node(lm, examples):
    metric, student = PipelineMetric(Triage()), Triage()
    counts = {name: 0 for name in student.nodes()}
    with dspy.context(lm=lm.lm, adapter=lm.adapter):
        for example in examples:
            for name, verdict in metric.judge(example, student(**example.inputs())).items():
                counts[name] += not verdict.passed
    return counts


@pytest.mark.parametrize("make", [lambda m: OPRO(m, steps=1, candidates_per_step=1, max_lm_calls=100, val_size=0),
                                  lambda m: ProTeGi(m, steps=1, max_lm_calls=100, val_size=0)])
def test_the_node_failing_most_is_rewritten_first(split, make):
    train, val = split
    lm, _, _ = scripted_lm()
    counts = failures_per_node(lm, val)
    optimizer = make(PipelineMetric(Triage()))
    run(optimizer, lm, train, val)
    rewritten = [c.node for c in optimizer.history[1:]]
    assert rewritten
    if isinstance(optimizer, OPRO):  # OPRO attributes on the valset, ProTeGi on its minibatch
        assert counts[rewritten[0]] == max(counts.values()) > 0


def test_pipelines_only(split):
    train, val = split
    with pytest.raises(PipelineError, match="rewrites the nodes of pipec Pipelines"):
        OPRO(PipelineMetric(Triage())).compile(dspy.Predict("message -> category"), trainset=train, valset=val)


def test_clean_instruction_and_diff():
    assert clean_instruction("Instruction: <prompt>Classify the message.</prompt>") == "Classify the message."
    assert clean_instruction("  ") is None and clean_instruction("x" * 5000) is None
    assert clean_instruction("「請求」か「返金」かを判断してください。") == "「請求」か「返金」かを判断してください。"
    diff = instruction_diff("Classify it. Be brief.", "Classify it. Name the team.", "classify")
    assert "-Be brief." in diff and "+Name the team." in diff
