"""The live demo pool: incremental, recency-weighted, corrections over approvals, fed to a node."""

import copy

import dspy
import numpy as np
import pytest

from programs.demo_pool import CACHE_MIN_ROWS, DemoSource, ListSource, LivePool, PoolRow
from programs.errors import ConfigError
from programs.nodes import Classifier
from programs.retrieval import Retrieval
from programs.trace import capture
from tests.fakes import fake_lm

DAY = 86_400.0
NOW = 1_000 * DAY


def row(key, text, label, days_ago=0.0, kind="correction"):
    return PoolRow(key, {"text": text, "label": label}, NOW - days_ago * DAY, kind)


def labels(demos):
    return [d["label"] for d in demos]


class CountingSource(ListSource):
    """Counts how often the pool asks, and what cursor it passes."""

    def __init__(self, rows=()):
        super().__init__(rows)
        self.cursors = []

    def demos_since(self, cursor):
        self.cursors.append(cursor)
        return super().demos_since(cursor)


def test_a_row_added_now_is_selected_by_the_next_call_and_only_new_rows_are_embedded():
    source = CountingSource([row("a", "my card never arrived", "card"), row("b", "what is the exchange rate", "fx")])
    pool = LivePool(source, ("text",), k=1, clock=lambda: NOW)
    assert labels(pool.select({"text": "the parcel is late"})) in (["card"], ["fx"])
    assert pool.embedded == 2
    source.add(row("c", "my parcel is late again", "shipping"))
    assert labels(pool.select({"text": "the parcel is late"})) == ["shipping"]
    assert pool.embedded == 3  # the two earlier rows were not embedded again
    assert source.cursors == [None, 2]  # each selection asks only for what came after its cursor
    assert isinstance(source, DemoSource)


def test_recency_weighting_prefers_the_recent_of_two_equally_similar_rows():
    source = ListSource([row("old", "refund my order please", "old", days_ago=60),
                         row("new", "refund my order please", "new", days_ago=1)])
    pool = LivePool(source, ("text",), k=1, half_life_days=30, clock=lambda: NOW)
    assert labels(pool.select({"text": "refund my order please"})) == ["new"]
    old_scores = dict((d["label"], s) for s, d in pool.nearest(pool._embed(["refund my order please"])[0], k=2))
    assert old_scores["old"] == pytest.approx(old_scores["new"] * 0.5 ** (59 / 30), rel=1e-4)
    # Without decay the tie is broken by arrival: the first row wins.
    flat = LivePool(source, ("text",), k=1, half_life_days=None, clock=lambda: NOW)
    assert labels(flat.select({"text": "refund my order please"})) == ["old"]


def test_a_correction_wins_over_an_approval_of_the_same_call_whatever_the_order():
    source = ListSource([row("c1", "where is my parcel", "approved-output", kind="approved"),
                         row("c1", "where is my parcel", "corrected-output", kind="correction")])
    pool = LivePool(source, ("text",), k=4, clock=lambda: NOW)
    assert labels(pool.select({"text": "where is my parcel"})) == ["corrected-output"]
    source.add(row("c1", "where is my parcel", "approved-again", kind="approved"))
    assert labels(pool.select({"text": "where is my parcel"})) == ["corrected-output"]
    source.add(row("c1", "where is my parcel", "second-correction"))
    assert labels(pool.select({"text": "where is my parcel"})) == ["second-correction"]
    assert len(pool) == 1
    source.add(PoolRow("c1", None, NOW))  # withdrawn
    assert pool.select({"text": "where is my parcel"}) == [] and len(pool) == 0


def test_the_pool_grows_past_its_capacity_without_losing_rows():
    source = ListSource()
    pool = LivePool(source, ("text",), k=3, clock=lambda: NOW)
    for i in range(150):  # past the first capacity of 64, twice
        source.add(row(f"k{i}", f"message number {i} about topic {i % 7}", f"l{i}"))
        if i % 40 == 0:
            pool.refresh()
    pool.refresh()
    assert len(pool) == 150 and pool.embedded == 150
    assert labels(pool.select({"text": "message number 149 about topic 2"}))[-1] == "l149"


def test_live_rows_compete_with_a_compiled_retrieval_pool_on_one_embedding():
    base = Retrieval.build([{"text": "card never arrived", "label": "card_arrival"},
                            {"text": "exchange rate today", "label": "exchange_rate"}], ("text",), k=2)
    source = ListSource([row("x", "my top up failed twice", "top_up_failed")])
    node = Classifier("text", output="label", labels=["card_arrival", "exchange_rate", "top_up_failed"])
    node.retrieval = base
    pool = LivePool.for_node(node, source, clock=lambda: NOW)
    assert (pool.k, pool.embedding, pool.query_fields) == (2, "hash", ("text",))
    demos = pool.select({"text": "top up failed"}, base=base)
    # The best k of both pools, nearest last: the live row, then the better of the trainset rows.
    assert len(demos) == 2 and labels(demos)[-1] == "top_up_failed"
    assert labels(demos)[0] in ("card_arrival", "exchange_rate")


def test_a_node_with_a_live_pool_shows_the_live_demos_in_its_call_and_prompt():
    node = Classifier("text", output="label", labels=["card", "fx"])
    node.demos = [dspy.Example(text="fixed demo", label="fx").with_inputs("text")]
    source = ListSource()
    node.live_pool = LivePool.for_node(node, source, clock=lambda: NOW)
    source.add(row("c9", "ゲームのカードが届きません", "card"))  # Japanese survives embedding and prompts
    lm, engine = fake_lm(lambda fields, inputs: {"label": "card"})
    with dspy.context(lm=lm.lm, adapter=lm.adapter), capture(node) as calls:
        node(text="カードが届きません")
    assert [d["text"] for d in calls[0].demos] == ["fixed demo", "ゲームのカードが届きません"]
    prompt = str(engine.requests[-1].messages)
    assert "ゲームのカードが届きません" in prompt and "fixed demo" in prompt
    assert copy.deepcopy(node).live_pool is node.live_pool  # a runtime resource, shared by copies


class BrokenSource:
    def demos_since(self, cursor):
        raise OSError("the store went away")


def test_a_failing_source_never_fails_the_call(caplog):
    pool = LivePool(BrokenSource(), ("text",), clock=lambda: NOW)
    assert pool.select({"text": "hello"}) == []
    assert pool.select({"text": "hello"}, fixed=["fixed"]) == ["fixed"]
    assert [r.getMessage() for r in caplog.records].count(
        "live demo pool: its source failed (OSError: the store went away); the node keeps the demos it has") == 1


def test_bad_settings_are_config_errors():
    with pytest.raises(ConfigError, match="k >= 1"):
        LivePool(ListSource(), ("text",), k=0)
    with pytest.raises(ConfigError, match="half_life_days"):
        LivePool(ListSource(), ("text",), half_life_days=-1)
    with pytest.raises(ConfigError, match="order"):
        LivePool(ListSource(), ("text",), order="random")


class CachingSource(ListSource):
    """A ``VectorCache`` in memory: what a pool stored, by (key, text digest) and embedding."""

    def __init__(self, rows=()):
        super().__init__(rows)
        self.vectors, self.reads = {}, []

    def cached_vectors(self, embedding, keys):
        self.reads.append(len(keys))
        found = [self.vectors.get((embedding, *key)) for key in keys]
        rows = np.array([-1 if v is None else i for i, v in enumerate(found)], dtype=np.int64)
        dim = next((len(v) for v in found if v is not None), 0)
        return rows, np.array([v if v is not None else np.zeros(dim) for v in found], dtype=np.float32).reshape(-1, dim)

    def keep_vectors(self, embedding, keys, vectors):
        for key, vector in zip(keys, vectors, strict=True):
            self.vectors[(embedding, *key)] = np.array(vector)


def test_vectors_computed_once_are_read_back_by_the_next_pool_and_give_the_same_demos():
    rows = [row(f"k{i}", f"message {i} about topic {i % 7} カード", f"l{i}") for i in range(CACHE_MIN_ROWS + 6)]
    source = CachingSource(rows)
    first = LivePool(source, ("text",), k=3, clock=lambda: NOW)
    query = {"text": "message 12 about topic 5"}
    expected = first.select(query)
    assert (first.embedded, first.reused, len(source.vectors)) == (len(rows), 0, len(rows))
    second = LivePool(source, ("text",), k=3, clock=lambda: NOW)
    assert second.select(query) == expected
    assert (second.embedded, second.reused) == (0, len(rows))  # read, not embedded again
    # A key whose text changed is embedded again; a few new rows skip the cache (reading costs more).
    source.add(row("k3", "a completely different text now", "changed"), row("new", "one new row", "n"))
    second.refresh()
    assert (second.embedded, second.reused, source.reads) == (2, len(rows), [len(rows), len(rows)])
    changed = [row(f"k{i}", f"message {i} about topic {i % 7} カード" + ("!" if i == 3 else ""), f"l{i}")
               for i in range(CACHE_MIN_ROWS + 6)]
    third = LivePool(CachingSource(changed), ("text",), k=3, clock=lambda: NOW)
    third.source.vectors = dict(source.vectors)
    third.refresh()
    assert (third.embedded, third.reused) == (1, len(rows) - 1)


def test_a_pool_for_a_compiled_node_weighs_its_vectors_as_the_retrieval_does():
    base = Retrieval.build([{"text": "card never arrived", "label": "card_arrival"},
                            {"text": "exchange rate today", "label": "exchange_rate"}], ("text",), k=2)
    node = Classifier("text", output="label", labels=["card_arrival", "exchange_rate"])
    node.retrieval = base
    pool = LivePool.for_node(node, ListSource(), clock=lambda: NOW)
    texts = ["my card never came", "カードがまだ届きません"]
    assert np.array_equal(pool._embed(texts), base.embed(texts))
