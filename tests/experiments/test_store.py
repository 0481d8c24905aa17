"""The flywheel store on real DuckDB files: schema and migrations, batched appends, labels and
corrections, a process killed mid-append, and two processes at once."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest

from experiments.store import MIGRATIONS, SCHEMA_VERSION, VIEWS, Store, default_store_path, migrate
from metrics.verdict import Verdict
from programs.errors import StoreBusyError, StoreError, UserError
from tests.store_traces import call, triage_trace

REPO = Path(__file__).resolve().parents[2]

CONTRACT = {
    "meta": ["key", "value"],
    "traces": ["trace_id", "pipeline", "program", "program_version", "mlflow_run_id", "source", "inputs", "outputs",
               "error", "error_kind", "seconds", "created_at"],
    "node_calls": ["call_id", "trace_id", "node", "kind", "position", "inputs", "outputs", "output_field", "error",
                   "seconds", "lm_calls", "prompt_tokens", "completion_tokens", "demos", "created_at"],
    "verdicts": ["verdict_id", "trace_id", "call_id", "node", "validator", "source", "score", "passed", "counted",
                 "feedback", "details", "created_at"],
    "labels": ["label_id", "trace_id", "call_id", "node", "validator", "reviewer", "passed", "score", "comment",
               "created_at"],
    "corrections": ["correction_id", "trace_id", "call_id", "node", "reviewer", "outputs", "comment", "created_at"],
    "embeddings": ["call_id", "embedding", "vector", "created_at", "text_sha"],
}


def test_the_path_is_the_flag_then_pipec_store_then_pipec_home(tmp_path, monkeypatch):
    assert default_store_path() == tmp_path / "pipec-home" / "store.duckdb"
    monkeypatch.setenv("PIPEC_STORE", str(tmp_path / "env.duckdb"))
    assert default_store_path() == tmp_path / "env.duckdb"
    assert default_store_path(tmp_path / "flag.duckdb") == tmp_path / "flag.duckdb"


def test_a_new_store_has_the_contract_tables_and_the_schema_version(tmp_path):
    with Store.open() as store:
        assert store.path == tmp_path / "pipec-home" / "store.duckdb" and store.path.is_file()
        assert store.schema_version() == SCHEMA_VERSION == len(MIGRATIONS)
        for table, columns in CONTRACT.items():
            found = [r["column_name"] for r in store.query(
                "SELECT column_name FROM information_schema.columns WHERE table_name = ? ORDER BY ordinal_position",
                [table])]
            assert found[: len(columns)] == columns, table
        views = {r["table_name"] for r in store.query("SELECT table_name FROM information_schema.tables "
                                                       "WHERE table_type = 'VIEW'")}
        assert set(VIEWS) <= views


def test_traces_node_calls_and_verdicts_round_trip_with_japanese_text(tmp_path):
    message = "荷物が届きません。追跡番号は JP123 です"
    reply = "ご不便をおかけして申し訳ありません。配送チームが本日確認します。"
    traces = [triage_trace("t1", message, "shipping", reply), triage_trace("t2", "二重に請求されました", None, None)]
    polite = Verdict(0.5, False, "もっと丁寧に", {"n": 1})
    verdicts = {"t1": {"classify": Verdict(1.0, True), "reply": {"polite": polite}}}
    with Store.open(tmp_path / "s.duckdb") as store:
        assert store.append_traces(traces, verdicts, mlflow_run_id="run-1", source="evaluate",
                                   program="compiled/triage.json") == 3
        [t1] = store.query("SELECT * FROM traces WHERE trace_id = 't1'")
        assert t1["inputs"] == {"message": message} and t1["outputs"] == {"category": "shipping", "reply": reply}
        assert (t1["mlflow_run_id"], t1["source"], t1["program"], t1["pipeline"]) == \
            ("run-1", "evaluate", "compiled/triage.json", "triage")
        [t2] = store.query("SELECT * FROM traces WHERE trace_id = 't2'")
        assert t2["error"].startswith("LMError") and t2["error_kind"] == "lm" and t2["outputs"] == {}
        calls = store.query("SELECT * FROM node_calls ORDER BY trace_id, position")
        assert [(c["call_id"], c["node"], c["position"]) for c in calls] == \
            [("t1/0", "classify", 0), ("t1/1", "reply", 1), ("t2/0", "classify", 0)]
        assert calls[1]["outputs"] == {"reply": reply} and calls[1]["inputs"]["message"] == message
        assert calls[2]["outputs"] is None and calls[2]["error"].startswith("LMError")
        rows = store.query("SELECT node, call_id, validator, source, passed, score, feedback, details FROM verdicts "
                           "ORDER BY node")
        assert rows == [
            {"node": "classify", "call_id": "t1/0", "validator": "node", "source": "rule", "passed": True,
             "score": 1.0, "feedback": "", "details": {}},
            {"node": "reply", "call_id": "t1/1", "validator": "polite", "source": "rule", "passed": False,
             "score": 0.5, "feedback": "もっと丁寧に", "details": {"n": 1}},
        ]
    # The text is stored as text, not as \\u escapes: other tools read the file too.
    con = duckdb.connect(str(tmp_path / "s.duckdb"), read_only=True)
    assert message in con.execute("SELECT CAST(inputs AS VARCHAR) FROM traces WHERE trace_id = 't1'").fetchall()[0][0]
    con.close()


def test_batch_columns_keep_every_value_the_encoder_and_the_ids_need(tmp_path):
    import dspy

    class Ticket:  # not JSON: written through its as_dict
        def as_dict(self):
            return {"id": "T-1", "件名": "返金"}

    odd = triage_trace("t1", "返金してください", "billing", "承知しました")
    odd.calls[0].inputs = {"message": "m", "ticket": Ticket(), "score": float("nan")}  # JSON has no NaN: null
    odd.calls[1].inputs = {1: "an integer key"}  # orjson refuses the key: the column is encoded value by value
    odd.prediction = dspy.Prediction(category="billing", reply="承知しました", dspy_uuid="internal")
    plain = triage_trace("t2", "b", None, None)
    verdicts = {"t1": {"reply": {"polite": Verdict(1.0, True), "short": Verdict(0.0, False, "長い", {"words": 90})}},
                "t2": {"reply": Verdict(0.0, False, "no reply"), "classify": Verdict(0.0, False)}}
    with Store.open(tmp_path / "s.duckdb") as store:
        assert store.append_traces([odd, plain], verdicts, verdict_source="judge") == 3
        calls = store.query("SELECT call_id, inputs FROM node_calls ORDER BY call_id")
        assert calls == [{"call_id": "t1/0", "inputs": {"message": "m", "ticket": {"id": "T-1", "件名": "返金"},
                                                        "score": None}},
                         {"call_id": "t1/1", "inputs": {"1": "an integer key"}},
                         {"call_id": "t2/0", "inputs": {"message": "b"}}]
        [t1] = store.query("SELECT outputs FROM traces WHERE trace_id = 't1'")
        assert t1["outputs"] == {"category": "billing", "reply": "承知しました"}  # DSPy's own fields left out
        rows = store.query("SELECT verdict_id, call_id, node, validator, passed, details FROM verdicts "
                           "ORDER BY verdict_id")
        assert rows == [
            {"verdict_id": "t1/1:polite:judge", "call_id": "t1/1", "node": "reply", "validator": "polite",
             "passed": True, "details": {}},
            {"verdict_id": "t1/1:short:judge", "call_id": "t1/1", "node": "reply", "validator": "short",
             "passed": False, "details": {"words": 90}},
            {"verdict_id": "t2/0:node:judge", "call_id": "t2/0", "node": "classify", "validator": "node",
             "passed": False, "details": {}},
            {"verdict_id": "t2/reply:node:judge", "call_id": None, "node": "reply", "validator": "node",
             "passed": False, "details": {}},  # t2 never reached reply: the verdict names the trace and node
        ]


def test_json_text_that_looks_like_structure_round_trips_exactly_and_a_verdict_takes_the_later_call(tmp_path):
    # A batch's JSON column is encoded as one JSON array and cut at its top-level commas: quotes,
    # backslashes, commas and brackets inside strings (and keys) must not be taken for structure.
    tricky = {"q": 'say "a, b" [x] {y}', "\\": "C:\\dir\\", "end\\": "\\\"", "日本語,\"]": ["改行\n", {"}": "{"}],
              "n": [1, -2.5, None, True, 10**18]}
    first = triage_trace("t1", 'a "quoted", message]', "billing", 'reply with \\" and ,{}')
    first.calls[0].demos = [tricky, {"message": "]}],[{"}]
    again = call("classify", 2, "shipping", inputs=tricky)  # classify once more, after the reply
    first.calls.append(again)
    second = triage_trace("t2", "}", None, None)  # classify raised: its outputs are NULL, not JSON null
    verdicts = {"t1": {"classify": Verdict(0.0, False, "x", tricky)}, "t2": {"classify": Verdict(1.0, True)}}
    with Store.open(tmp_path / "s.duckdb") as store:
        assert store.append_traces([first, second], verdicts) == 4
        calls = store.query("SELECT call_id, inputs, outputs, demos FROM node_calls ORDER BY call_id")
        assert [c["call_id"] for c in calls] == ["t1/0", "t1/1", "t1/2", "t2/0"]
        assert calls[0]["demos"] == [tricky, {"message": "]}],[{"}] and calls[2]["inputs"] == tricky
        assert calls[1]["outputs"] == {"reply": 'reply with \\" and ,{}'}
        assert calls[3]["outputs"] is None and calls[3]["demos"] == []
        assert store.query("SELECT count(*) AS n FROM node_calls WHERE outputs IS NULL") == [{"n": 1}]
        [trace] = store.query("SELECT inputs FROM traces WHERE trace_id = 't1'")
        assert trace["inputs"] == {"message": 'a "quoted", message]'}
        rows = store.query("SELECT call_id, details FROM verdicts ORDER BY call_id")
        assert rows == [{"call_id": "t1/2", "details": tricky}, {"call_id": "t2/0", "details": {}}]


def test_one_json_array_is_cut_into_the_values_one_call_per_value_would_write():
    import random

    import orjson

    from experiments.store import _separated, _split_json_list

    pieces = ['"', "\\", ",", "[", "]", "{", "}", "a", "日", " ", "\n", "\x00", ":", '\\"', "\\\\", '\\\\"']
    rng = random.Random(7)

    def text():
        return "".join(rng.choice(pieces) for _ in range(rng.randint(0, 6)))

    def value(depth=0):
        pick = rng.random()
        if depth > 3 or pick < 0.3:
            return text()
        if pick < 0.4:
            return rng.choice([1, -2.5, None, True, 10**18])
        if pick < 0.7:
            return [value(depth + 1) for _ in range(rng.randint(0, 3))]
        return {text(): value(depth + 1) for _ in range(rng.randint(0, 3))}

    for _ in range(500):
        values = [value() for _ in range(rng.randint(0, 12))]
        valid = [rng.random() < 0.8 for _ in values]
        cut = _split_json_list(orjson.dumps(_separated(values)), len(values), valid)
        assert cut is not None, values  # the fast path, not the value-by-value fallback
        want = [orjson.dumps(v).decode() if ok else None for v, ok in zip(values, valid, strict=True)]
        assert cut.to_pylist() == want, values
    # Not the values expected: None, and the caller encodes value by value.
    assert _split_json_list(orjson.dumps(_separated(["a", "b"])), 3) is None
    assert _split_json_list(b'["a","b"]', 2) is None and _split_json_list(b'["a"\x00"b"]', 2) is None


def test_a_writer_checkpoints_at_its_own_threshold_and_leaves_other_databases_at_duckdbs(tmp_path):
    from experiments.store import CHECKPOINT_THRESHOLD

    other = duckdb.connect(str(tmp_path / "other.duckdb"))  # another database in this process
    default = other.execute("SELECT current_setting('checkpoint_threshold')").fetchall()
    with Store.open(tmp_path / "s.duckdb") as store:
        [mine] = store.query("SELECT current_setting('checkpoint_threshold') AS v")
        with duckdb.connect() as memory:  # how DuckDB spells the threshold back
            want = memory.execute(f"SET checkpoint_threshold = '{CHECKPOINT_THRESHOLD}'; "
                                  "SELECT current_setting('checkpoint_threshold')").fetchall()
        assert mine["v"] == want[0][0] != default[0][0]
        assert other.execute("SELECT current_setting('checkpoint_threshold')").fetchall() == default
    other.close()


def test_a_batch_is_one_transaction(tmp_path):
    with Store.open(tmp_path / "s.duckdb") as store:
        store.append_traces([triage_trace("t1", "a", "billing", "ok")])
        # t1 again: the primary key refuses it, and t9 (same batch) is not written either.
        with pytest.raises(duckdb.ConstraintException):
            store.append_traces([triage_trace("t9", "b", "billing", "ok"), triage_trace("t1", "a", "billing", "ok")])
        assert store.state()["traces"] == 1 and store.state()["node_calls"] == 2


def test_labels_corrections_and_judge_verdicts_find_their_call(tmp_path):
    with Store.open(tmp_path / "s.duckdb") as store:
        store.append_traces([triage_trace("t1", "a", "billing", "ok")])
        label = store.add_label("t1", node="reply", passed=False, validator="polite", reviewer="ann", score=2,
                                comment="冷たい")
        correction = store.add_correction("t1", {"category": "refund"}, call_id="t1/0", reviewer="ben")
        store.add_verdicts([{"trace_id": "t1", "node": "reply", "validator": "polite", "source": "judge",
                             "passed": True, "score": 0.9}])
        [row] = store.query("SELECT * FROM labels")
        assert (row["label_id"], row["call_id"], row["node"], row["score"], row["comment"]) == \
            (label, "t1/1", "reply", 2, "冷たい")
        [row] = store.query("SELECT * FROM corrections")
        assert (row["correction_id"], row["node"], row["outputs"]) == (correction, "classify", {"category": "refund"})
        [row] = store.query("SELECT call_id, source FROM verdicts")
        assert row == {"call_id": "t1/1", "source": "judge"}
        with pytest.raises(StoreError, match="has no call of node 'summary'"):
            store.add_label("t1", node="summary", passed=True)
        with pytest.raises(StoreError, match="from 1 to 5"):
            store.add_label("t1", node="reply", passed=True, score=9)
        with pytest.raises(StoreError, match="non-empty mapping"):
            store.add_correction("t1", {}, node="reply")
        with pytest.raises(StoreError, match="verdict source 'robot'"):
            store.add_verdicts([{"trace_id": "t1", "node": "reply", "source": "robot", "passed": True}])
        assert store.state()["labels"] == 1 and store.state()["verdicts"] == 1


def test_embeddings_append_as_float_lists(tmp_path):
    with Store.open(tmp_path / "s.duckdb") as store:
        store.append_traces([triage_trace("t1", "a", "billing", "ok")])
        store.add_embeddings(["t1/0", "t1/1"], "hash-256", [[0.5, 0.25], [1.0, 0.0]])
        rows = store.query("SELECT call_id, embedding, vector FROM embeddings ORDER BY call_id")
        assert rows == [{"call_id": "t1/0", "embedding": "hash-256", "vector": [0.5, 0.25]},
                        {"call_id": "t1/1", "embedding": "hash-256", "vector": [1.0, 0.0]}]


def test_stored_vectors_are_found_by_call_embedding_and_text_digest(tmp_path):
    import numpy as np

    vectors = np.array([[0.5, -0.25, 0.0], [1.0, 0.0, 2.5]], dtype=np.float32)
    with Store.open(tmp_path / "s.duckdb") as store:
        store.append_traces([triage_trace("t1", "カードが届きません", "billing", "ok")])
        assert store.add_embeddings(["t1/0", "t1/1"], "hash", vectors[[0, 0]], text_shas=["aa", "bb"]) == 2
        store.add_embeddings(["t1/0"], "minilm", vectors[1:], text_shas=["aa"])
        store.add_embeddings(["t1/1"], "hash", vectors[:1], text_shas=["bb"])  # stored twice: either answer
        store.add_embeddings(["t1/0"], "hash", [[9.0, 9.0]], text_shas=["cc"])  # another length: not reused
    with Store.open(tmp_path / "s.duckdb", read_only=True) as store:  # a reader finds them too
        keys = [("t1/0", "aa"), ("t1/1", "bb"), ("t1/0", "other text"), ("t9/0", "aa"), ("t1/0", "cc")]
        rows, matrix = store.embedding_vectors("hash", keys)
        assert rows.tolist()[2:] == [-1, -1, -1] and matrix.dtype == np.float32 and matrix.shape[1] == 3
        assert np.array_equal(matrix[rows[0]], vectors[0]) and np.array_equal(matrix[rows[1]], vectors[0])
        rows, matrix = store.embedding_vectors("minilm", [("t1/1", "aa"), ("t1/0", "aa")])
        assert rows.tolist() == [-1, 0] and np.array_equal(matrix[0], vectors[1])
        assert store.embedding_vectors("hash", [])[0].tolist() == []
        assert store.embedding_vectors("nope", [("t1/0", "aa")])[0].tolist() == [-1]
    with Store.open(tmp_path / "s.duckdb") as store, pytest.raises(StoreError, match="1 call ids for 2 text digests"):
        store.add_embeddings(["t1/0"], "hash", vectors[:1], text_shas=["aa", "bb"])


def test_a_reader_cannot_write(tmp_path):
    with Store.open(tmp_path / "s.duckdb"):
        pass
    with Store.open(tmp_path / "s.duckdb", read_only=True) as store, pytest.raises(StoreError, match="read-only"):
        store.append_traces([triage_trace("t1", "a", "billing", "ok")])


def test_reading_a_missing_store_says_how_to_get_one(tmp_path):
    with pytest.raises(StoreError, match=r"no store at .*nope\.duckdb: record calls first"):
        Store.open(tmp_path / "nope.duckdb", read_only=True)
    assert not (tmp_path / "nope.duckdb").exists()


def test_a_file_that_is_not_a_store_is_a_clear_error(tmp_path):
    (tmp_path / "notes.duckdb").write_text("hello, not a database\n", encoding="utf-8")
    with pytest.raises(StoreError, match="cannot open the store"):
        Store.open(tmp_path / "notes.duckdb")


# --- migrations ------------------------------------------------------------------------------

def test_a_version_1_file_opens_with_the_current_code_and_keeps_its_rows(tmp_path):
    path = tmp_path / "v1.duckdb"
    con = duckdb.connect(str(path))
    assert migrate(con, MIGRATIONS[:1]) == 0  # what a pipec that knew only migration 1 wrote
    con.execute("INSERT INTO traces (trace_id, pipeline, inputs, created_at) VALUES "
                "('old', 'triage', '{\"message\": \"古い\"}', TIMESTAMPTZ '2026-01-05 10:00:00+00')")
    con.execute("INSERT INTO node_calls (call_id, trace_id, node, position, seconds, prompt_tokens, "
                "completion_tokens, lm_calls, created_at) VALUES ('old/0', 'old', 'classify', 0, 0.5, 10, 2, 1, "
                "TIMESTAMPTZ '2026-01-05 10:00:00+00')")
    assert con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchall() == [("1",)]
    assert "node_latency" not in {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables")
                                  .fetchall()}
    con.close()
    # A reader migrates an old file too (briefly read-write), then reads.
    with Store.open(path, read_only=True) as store:
        assert store.schema_version() == SCHEMA_VERSION
        [row] = store.query("SELECT node, calls, p50_seconds FROM node_latency")
        assert row == {"node": "classify", "calls": 1, "p50_seconds": 0.5}
        assert store.query("SELECT inputs FROM traces") == [{"inputs": {"message": "古い"}}]


def test_a_version_4_file_with_rows_loses_the_call_and_verdict_keys_and_nothing_else(tmp_path):
    path = tmp_path / "v4.duckdb"
    con = duckdb.connect(str(path))
    migrate(con, MIGRATIONS[:4])  # what the pipec before migration 5 wrote: keyed node_calls and verdicts
    old = Store(con, path, read_only=False)
    traces = [triage_trace(f"t{i}", f"荷物 {i} が届きません", "shipping", f"確認します {i}") for i in range(30)]
    old.append_traces(traces, {f"t{i}": {"reply": Verdict(1.0, True), "classify": Verdict(0.0, False, "違う")}
                               for i in range(30)})
    old.add_correction("t3", {"category": "billing"}, node="classify", reviewer="ann")
    old.add_label("t4", node="reply", passed=True, reviewer="ben")
    old.add_verdicts([{"trace_id": "t5", "node": "reply", "source": "judge", "passed": False, "feedback": "冷たい"}])
    keyed = {r["table_name"] for r in old.query("SELECT table_name FROM duckdb_constraints() "
                                                "WHERE constraint_type = 'PRIMARY KEY'")}
    assert {"node_calls", "verdicts", "traces"} <= keyed
    before = {table: old.query(f"SELECT * FROM {table}") for table in ("node_calls", "verdicts")}  # insertion order
    views = {v: old.query(f"SELECT * FROM {v} ORDER BY ALL") for v in ("approved_calls", "error_accumulation",
                                                                        "node_latency", "pass_rate_daily")}
    old.close()
    with Store.open(path) as store:
        assert store.schema_version() == SCHEMA_VERSION
        assert {table: store.query(f"SELECT * FROM {table}") for table in ("node_calls", "verdicts")} == before
        assert {v: store.query(f"SELECT * FROM {v} ORDER BY ALL") for v in views} == views
        [approved] = store.query("SELECT call_id, outputs FROM approved_calls WHERE approval = 'correction'")
        assert approved == {"call_id": "t3/0", "outputs": {"category": "billing"}}
        keyed = {r["table_name"] for r in store.query("SELECT table_name FROM duckdb_constraints() "
                                                      "WHERE constraint_type = 'PRIMARY KEY'")}
        assert keyed == {"traces", "labels", "corrections", "meta"}
        assert store.query("SELECT table_name, expressions, is_unique FROM duckdb_indexes()") == \
            [{"table_name": "node_calls", "expressions": "[call_id]", "is_unique": False}]
        # Appends go on; a trace appended again is still refused whole, by the traces' key.
        store.append_traces([triage_trace("t30", "新しい", "billing", "はい")], {"t30": {"reply": Verdict(1.0, True)}})
        with pytest.raises(duckdb.ConstraintException):
            store.append_traces([triage_trace("t31", "x", "billing", "ok"), triage_trace("t3", "x", "billing", "ok")])
        assert store.state() | {"path": None} == {"path": None, "schema_version": SCHEMA_VERSION, "traces": 31,
                                                  "node_calls": 62, "verdicts": 62, "labels": 1, "corrections": 1,
                                                  "embeddings": 0}
        assert store.add_label("t30", call_id="t30/1", passed=True)  # the label finds its call by id


def test_a_failing_migration_leaves_the_file_at_the_version_before(tmp_path):
    def broken(con):
        con.execute("CREATE TABLE half_done (x INTEGER)")
        raise RuntimeError("migration bug")

    path = tmp_path / "s.duckdb"
    with Store.open(path):
        pass
    con = duckdb.connect(str(path))
    with pytest.raises(RuntimeError, match="migration bug"):
        migrate(con, (*MIGRATIONS, broken))
    assert con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchall() == [(str(SCHEMA_VERSION),)]
    assert con.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = 'half_done'") \
        .fetchall() == [(0,)]
    con.close()


def test_a_store_from_a_newer_pipec_is_refused_not_rewritten(tmp_path):
    path = tmp_path / "s.duckdb"
    with Store.open(path):
        pass
    con = duckdb.connect(str(path))
    con.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    con.close()
    for read_only in (False, True):
        with pytest.raises(StoreError, match=r"newer pipec \(schema version 99"):
            Store.open(path, read_only=read_only)


# --- a process killed mid-append ---------------------------------------------------------------

_APPENDER = """
import sys
from benchmarks.store import synthetic_traces
from experiments.store import Store
path, batch, start = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
with Store.open(path) as store:
    b = start
    while True:
        traces, verdicts = synthetic_traces(batch, start=b * batch, prefix="kill")
        store.append_traces(traces, verdicts)
        b += 1
        print(b, flush=True)
"""


def test_kill_9_during_batch_appends_loses_no_committed_batch_and_the_store_opens(tmp_path):
    path, batch = tmp_path / "s.duckdb", 1500  # traces per batch; 2 node calls and 2 verdicts each
    committed = 0
    for round_ in range(3):  # killed three times; each time reopened and appended to again
        proc = subprocess.Popen([sys.executable, "-c", _APPENDER, str(path), str(batch), str(committed // batch)],
                                cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        printed = committed // batch
        while printed < committed // batch + 2 + round_:  # a few batches, then kill it mid-way through the next
            line = proc.stdout.readline()
            assert line, proc.stderr.read()
            printed = int(line)
        time.sleep(0.05 * round_)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL
        printed = max([printed, *map(int, proc.stdout.read().split())])  # batches it reported after our read
        with Store.open(path) as store:
            state = store.state()
            n = state["traces"]
            assert n % batch == 0 and printed * batch <= n <= (printed + 1) * batch, (n, printed)
            assert state["node_calls"] == state["verdicts"] == 2 * n
            ids = store.query("SELECT min(trace_id) AS first, max(trace_id) AS last, count(DISTINCT trace_id) AS k "
                              "FROM traces")[0]
            assert ids == {"first": "kill-000000000", "last": f"kill-{n - 1:09d}", "k": n}
            orphans = store.query("SELECT count(*) AS n FROM node_calls c ANTI JOIN traces t USING (trace_id)")
            assert orphans == [{"n": 0}]
        committed = n


# --- two processes at once ---------------------------------------------------------------------

_HOLDER = """
import os, sys
from experiments.store import Store
with Store.open(sys.argv[1]) as store:
    print(os.getpid(), flush=True)
    sys.stdin.readline()
    from tests.store_traces import call, triage_trace
    store.append_traces([triage_trace("held", "x", "billing", "ok")])
"""

_WRITER = """
import sys
from experiments.store import Store
from programs.errors import StoreBusyError
print("opening", flush=True)
try:
    with Store.open(sys.argv[1], wait=float(sys.argv[2])) as store:
        from tests.store_traces import call, triage_trace
        store.append_traces([triage_trace("second", "y", "refund", "ok")])
except StoreBusyError as exc:
    print(str(exc))
    sys.exit(2)
"""


@pytest.fixture
def holder(tmp_path):
    """Another process that holds the store open read-write until told to finish."""
    path = tmp_path / "s.duckdb"
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(path)], cwd=REPO, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pid = int(proc.stdout.readline() or 0)
    assert pid == proc.pid, proc.stderr.read()
    yield path, proc
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def test_a_second_writer_gets_one_clear_line_naming_the_holder(holder):
    path, proc = holder
    done = subprocess.run([sys.executable, "-c", _WRITER, str(path), "0.3"], cwd=REPO, capture_output=True,
                          text=True)
    assert done.returncode == 2, done.stderr
    assert done.stdout.splitlines() == ["opening", f"the store {path} is in use by another pipec process (pid "
                                        f"{proc.pid}); wait for it or pass --store OTHER"]
    assert issubclass(StoreBusyError, UserError)


def test_readers_meet_the_lock_too_and_exit_2_with_one_line(holder):
    path, proc = holder
    env = {**os.environ, "PIPEC_STORE_WAIT": "0.3"}
    for command in (["stats"], ["export"]):
        done = subprocess.run([sys.executable, "-m", "experiments", *command, "--store", str(path)], cwd=REPO,
                              env=env, capture_output=True, text=True)
        assert done.returncode == 2, done.stderr
        assert done.stdout == ""
        assert done.stderr.strip().splitlines() == [
            f"Error: the store {path} is in use by another pipec process (pid {proc.pid}); wait for it or pass "
            "--store OTHER"]


def test_a_second_writer_that_waits_gets_the_store_when_the_first_finishes(holder):
    path, proc = holder
    second = subprocess.Popen([sys.executable, "-c", _WRITER, str(path), "120"], cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    assert second.stdout.readline() == "opening\n", second.stderr.read()
    time.sleep(0.5)  # let it meet the lock and start waiting (no assertion depends on this time)
    proc.stdin.write("go\n")
    proc.stdin.flush()
    assert proc.wait(timeout=60) == 0, proc.stderr.read()
    out, err = second.communicate(timeout=120)
    assert second.returncode == 0, out + err
    with Store.open(path, read_only=True) as store:
        assert [r["trace_id"] for r in store.query("SELECT trace_id FROM traces ORDER BY trace_id")] == \
            ["held", "second"]
        assert json.loads(json.dumps(store.state()))["node_calls"] == 4


def test_in_one_process_a_reader_shares_an_open_writer_and_a_writer_cannot_join_readers(tmp_path):
    path = tmp_path / "s.duckdb"
    with Store.open(path) as writer:
        writer.append_traces([triage_trace("t1", "a", "billing", "ok")])
        with Store.open(path, read_only=True) as reader:
            assert reader.state()["traces"] == 1
            with pytest.raises(StoreError, match="read-only"):
                reader.add_label("t1", node="classify", passed=True)
        writer.append_traces([triage_trace("t2", "b", "billing", "ok")])  # the writer still writes
    with Store.open(path, read_only=True) as reader:
        with pytest.raises(StoreError, match="open read-only; close that Store before opening it for writing"):
            Store.open(path)
        assert reader.state()["traces"] == 2


def test_a_closed_store_says_so(tmp_path):
    store = Store.open(tmp_path / "s.duckdb")
    store.close()
    store.close()  # idempotent
    with pytest.raises(StoreError, match="is closed: open it again"):
        store.query("SELECT 1")
    with pytest.raises(StoreError, match="is closed: open it again"):
        store.append_traces([triage_trace("t", "a", "billing", "ok")])
