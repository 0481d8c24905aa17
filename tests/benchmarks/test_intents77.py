"""intents77's search-optimizer rows score the program the optimizer compiled, never zero-shot's,
and the optimizer sees only train messages (its valset is carved from train, not dev)."""

import dspy
import pytest

from benchmarks import banking77, intents77
from tests.fakes import fake_lm

LABELS = ("alpha", "beta", "gamma")
KEYWORDS = {"card": "alpha", "rate": "beta", "pin": "gamma"}
MARKER = "Answer with the label named by the message's keyword."


def _split(subset="intents77", *, seed=0, dev_per_label=5):
    words = {label: word for word, label in KEYWORDS.items()}
    train = [dspy.Example(text=f"train {i} about my {words[label]}", label=label).with_inputs("text")
             for i in range(8) for label in LABELS]
    dev = [dspy.Example(text=f"dev {i} about my {words[label]}", label=label).with_inputs("text")
           for i in range(2) for label in LABELS]
    return train, dev, LABELS


def _scripted():
    """Right (the keyword's label) only for a compiled program: one with demos in its prompt or
    the instruction a reflection wrote; zero-shot always answers "alpha". Any other output field
    (a proposer's, a reflection's) gets the marker instruction."""
    holder = {}

    def respond(fields, inputs):
        request = holder["engine"].requests[-1]
        compiled = len(request.messages) > 1 or MARKER in _prompt(request)
        answer = {f: MARKER for f in fields if f != "label"}
        if "label" in fields:
            text = inputs.get("text", "")
            answer["label"] = next((lab for word, lab in KEYWORDS.items() if word in text), "alpha") if compiled \
                else "alpha"
        return answer

    config, engine = fake_lm(respond)
    holder["engine"] = engine
    return config, engine


@pytest.fixture
def scripted(monkeypatch):
    config, engine = _scripted()
    monkeypatch.setattr(banking77, "load_split", _split)
    monkeypatch.setattr("experiments.lm.make_lm", lambda *a, **k: config)
    return engine


def _prompt(request):
    """The request's whole prompt: the system text and every message."""
    return "\n".join([str(request.system or "")] + [str(getattr(p, "text", "") or "") for m in request.messages
                                                    for p in m.parts])


def _prompts(engine):
    return [_prompt(r) for r in engine.requests]


def test_zero_shot_row_is_the_uncompiled_program(scripted):
    result = intents77.run(rows=["zero-shot"])
    row = next(r for r in result["rows"] if r["row"] == "zero-shot")
    assert row["n"] == 3 and row["accuracy"] == pytest.approx(1 / 3) and row["compile_lm_calls"] == 0


@pytest.mark.parametrize("name", [n for n, optimizer, _ in intents77.SEARCH_ROWS if optimizer == "bootstrap-rs"])
def test_search_row_scores_the_compiled_program_and_counts_its_calls(scripted, name):
    result = intents77.run(rows=[name])
    row = next(r for r in result["rows"] if r["row"] == name)
    assert row["status"] == "measured" and row["kind"] == "search"
    # zero-shot scores 1/3 here; only the compiled program (demos in its prompt) gets all 3 right
    assert row["accuracy"] == 1.0 and row["lm_calls_per_query"] == 1.0
    evaluation_calls = row["n"]
    assert row["compile_lm_calls"] == len(scripted.requests) - evaluation_calls > 0
    assert row["search_train"] == 3 and row["search_val"] == 3
    # the dev messages reach the LM only in the dev evaluation (the last n requests), once each
    prompts = _prompts(scripted)
    dev_texts = [e.text for e in _split()[1]]
    assert not any(t in p for p in prompts[:-evaluation_calls] for t in dev_texts)
    assert f"| {name} | 3 | 1.000 |" in result["table"]


def test_mipro_row_scores_the_program_it_compiled(scripted):
    name = next(n for n, optimizer, _ in intents77.SEARCH_ROWS if optimizer == "mipro")
    result = intents77.run(rows=[name])
    row = next(r for r in result["rows"] if r["row"] == name)
    assert row["accuracy"] == 1.0 and row["compile_lm_calls"] > 0
    assert row["optimizer_settings"]["init.num_candidates"] == 3


def test_rows_not_named_are_not_run(scripted):
    result = intents77.run(rows=["zero-shot"])
    statuses = {r["row"]: r["status"] for r in result["rows"]}
    assert all(statuses[n] == "not run" for n, _, _ in intents77.SEARCH_ROWS)
    assert {"bootstrap", "protegi", "opro", "gepa"}.isdisjoint(statuses)


def test_a_search_rows_train_limit_cuts_its_trainset_and_keeps_the_valset(scripted, monkeypatch):
    name = next(n for n, optimizer, _ in intents77.SEARCH_ROWS if optimizer == "bootstrap-rs")
    monkeypatch.setitem(intents77.SEARCH_TRAIN_LIMIT, name, 2)
    result = intents77.run(rows=[name])
    row = next(r for r in result["rows"] if r["row"] == name)
    assert row["search_train"] == 2 and row["search_val"] == 3 and row["settings"]["search_train"] == 2
    # the search trainset is the first message of each label in train order; the third is cut, so it
    # never reaches the LM (not as a bootstrapped example, not as a labelled demo)
    train = _split()[0]
    first = [next(e for e in train if e.label == label) for label in dict.fromkeys(e.label for e in train)]
    prompts = _prompts(scripted)
    assert any(first[0].text in p for p in prompts)
    assert not any(first[2].text in p for p in prompts)
