"""The flywheel store: every recorded pipeline call, its verdicts, and the humans' labels and
corrections, in one DuckDB file.

Where it lives: ``--store PATH``, else ``$PIPEC_STORE``, else ``$PIPEC_HOME/store.duckdb``
(``PIPEC_HOME`` defaults to ``~/.cache/pipec``).

    meta         key/value: schema_version, created_with
    traces       one pipeline call: inputs, outputs, error, its MLflow run, where it came from
    node_calls   one node call inside a trace: inputs, outputs, latency, tokens, demos shown
    verdicts     a validator's judgement of a node call (source rule, judge, guard or human)
    labels       a human's pass/fail (and optional 1..5 score) on a node call
    corrections  a human's corrected output of a node call
    embeddings   vectors of node calls, for retrieval: a cache keyed by call, embedding and text digest

Writes are batched (an Arrow table registered and inserted with ``INSERT ... SELECT``), each
batch one transaction: a process killed mid-batch loses that batch only, and the file opens.
DuckDB lets one process open the file read-write, or several read-only; a second process waits
briefly, then gets ``StoreBusyError``. The schema is versioned: ``MIGRATIONS`` runs in order,
each in its own transaction, and the views (``pass_rate_daily``, ``error_accumulation``,
``judge_human_disagreements``, ``node_latency``, ``approved_calls``) are SQL inside the file,
so ``duckdb store.duckdb`` answers the same questions as ``pipec stats``.

Example:
    >>> with Store.open("/tmp/example-store.duckdb") as store:  # doctest: +SKIP
    ...     store.append_traces(traces, verdicts, mlflow_run_id=run_id, source="evaluate")
    ...     store.query("SELECT * FROM node_latency")
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from itertools import chain, repeat
from pathlib import Path
from typing import Any

from programs.errors import StoreBusyError, StoreError

__all__ = [
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "STATS_VIEWS",
    "VIEWS",
    "Store",
    "StoreFilter",
    "default_store_path",
    "export_rows",
    "migrate",
    "parse_store_spec",
    "store_dataset_rows",
    "store_stats",
    "trace_ids_digest",
]

logger = logging.getLogger(__name__)

DEFAULT_WAIT_SECONDS = 3.0  # how long a second process waits for the store before StoreBusyError
CHECKPOINT_THRESHOLD = "64MB"  # the WAL size at which a writer's commit checkpoints (Store.__init__)


def default_store_path(path: str | os.PathLike | None = None) -> Path:
    """The store file: ``path``, else ``$PIPEC_STORE``, else ``$PIPEC_HOME/store.duckdb``."""
    if path:
        return Path(path).expanduser()
    if os.environ.get("PIPEC_STORE"):
        return Path(os.environ["PIPEC_STORE"]).expanduser()
    home = Path(os.environ.get("PIPEC_HOME") or Path.home() / ".cache" / "pipec")
    return home / "store.duckdb"


# ---------------------------------------------------------------------------------------------
# Schema and migrations. Migration N (1-based) is MIGRATIONS[N - 1]; each runs once, in order,
# inside one transaction with the schema_version update, so a failed migration leaves the file
# at the version before it. Never edit a released migration: append a new one.
# ---------------------------------------------------------------------------------------------

_TABLES = """
CREATE TABLE IF NOT EXISTS traces (
    trace_id VARCHAR PRIMARY KEY, pipeline VARCHAR, program VARCHAR, program_version VARCHAR,
    mlflow_run_id VARCHAR, source VARCHAR, inputs JSON, outputs JSON, error VARCHAR,
    error_kind VARCHAR, seconds DOUBLE, created_at TIMESTAMPTZ);
CREATE TABLE IF NOT EXISTS node_calls (
    call_id VARCHAR PRIMARY KEY, trace_id VARCHAR, node VARCHAR, kind VARCHAR, position INTEGER,
    inputs JSON, outputs JSON, output_field VARCHAR, error VARCHAR, seconds DOUBLE, lm_calls INTEGER,
    prompt_tokens INTEGER, completion_tokens INTEGER, demos JSON, created_at TIMESTAMPTZ,
    lm_error BOOLEAN);
CREATE TABLE IF NOT EXISTS verdicts (
    verdict_id VARCHAR PRIMARY KEY, trace_id VARCHAR, call_id VARCHAR, node VARCHAR, validator VARCHAR,
    source VARCHAR, score DOUBLE, passed BOOLEAN, counted BOOLEAN, feedback VARCHAR, details JSON,
    created_at TIMESTAMPTZ);
CREATE TABLE IF NOT EXISTS labels (
    label_id VARCHAR PRIMARY KEY, trace_id VARCHAR, call_id VARCHAR, node VARCHAR, validator VARCHAR,
    reviewer VARCHAR, passed BOOLEAN, score INTEGER, comment VARCHAR, created_at TIMESTAMPTZ);
CREATE TABLE IF NOT EXISTS corrections (
    correction_id VARCHAR PRIMARY KEY, trace_id VARCHAR, call_id VARCHAR, node VARCHAR, reviewer VARCHAR,
    outputs JSON, comment VARCHAR, created_at TIMESTAMPTZ);
CREATE TABLE IF NOT EXISTS embeddings (
    call_id VARCHAR, embedding VARCHAR, vector FLOAT[], created_at TIMESTAMPTZ);
"""

# Views. The day of a verdict is the UTC day of the call it judges (not of the judging).
_VIEWS = {
    "pass_rate_daily": """
SELECT v.node,
       CAST(COALESCE(t.created_at, v.created_at) AT TIME ZONE 'UTC' AS DATE) AS day,
       v.source,
       count(*) AS verdicts,
       count(*) FILTER (WHERE v.passed) AS passed,
       avg(CASE WHEN v.passed THEN 1.0 ELSE 0.0 END) AS pass_rate,
       avg(v.score) AS mean_score
FROM verdicts v LEFT JOIN traces t ON t.trace_id = v.trace_id
WHERE v.counted AND v.node IS NOT NULL
GROUP BY v.node, day, v.source
ORDER BY day, v.node, v.source""",
    # A call failed when it raised or a counted verdict on it failed.
    "call_outcomes": """
SELECT c.call_id, c.trace_id, c.node, c.position, c.error IS NOT NULL AS errored,
       coalesce(bool_or(NOT v.passed) FILTER (WHERE v.counted), false) AS failed_verdict,
       (c.error IS NOT NULL) OR coalesce(bool_or(NOT v.passed) FILTER (WHERE v.counted), false) AS failed
FROM node_calls c LEFT JOIN verdicts v ON v.call_id = c.call_id
GROUP BY c.call_id, c.trace_id, c.node, c.position, c.error""",
    "first_failures": """
SELECT trace_id, call_id, node, position, errored FROM call_outcomes WHERE failed
QUALIFY row_number() OVER (PARTITION BY trace_id ORDER BY position, call_id) = 1""",
    # Error accumulation along the graph: where each failing trace first went wrong.
    "error_accumulation": """
SELECT o.node,
       min(o.position) AS first_position,
       count(DISTINCT o.trace_id) AS traces,
       count(*) AS calls,
       count(*) FILTER (WHERE o.failed) AS failed_calls,
       count(f.call_id) AS first_failures,
       count(f.call_id) / nullif((SELECT count(*) FROM first_failures), 0) AS share_of_failed_traces
FROM call_outcomes o LEFT JOIN first_failures f ON f.call_id = o.call_id
GROUP BY o.node
ORDER BY first_position, o.node""",
    # Every judge verdict that a human also labelled (same call; same validator, or a label on the
    # whole output). Issue 10's per-rubric agreement (accuracy, Cohen's kappa) builds on this.
    "judge_human_pairs": """
SELECT v.verdict_id, l.label_id, v.trace_id, v.call_id, v.node, v.validator,
       v.passed AS judge_passed, v.score AS judge_score, v.feedback AS judge_feedback,
       l.passed AS human_passed, l.score AS human_score, l.reviewer, l.comment,
       v.passed = l.passed AS agree, l.created_at AS labelled_at
FROM verdicts v JOIN labels l
  ON l.call_id = v.call_id AND (l.validator IS NULL OR l.validator = v.validator)
WHERE v.source = 'judge' AND v.counted AND l.passed IS NOT NULL""",
    "judge_human_disagreements": """
SELECT * FROM judge_human_pairs WHERE NOT agree ORDER BY labelled_at DESC""",
    "judge_human_agreement": """
SELECT node, validator, count(*) AS pairs, count(*) FILTER (WHERE NOT agree) AS disagreements,
       avg(CASE WHEN agree THEN 0.0 ELSE 1.0 END) AS disagreement_rate
FROM judge_human_pairs GROUP BY node, validator ORDER BY node, validator""",
    "node_latency": """
SELECT node, count(*) AS calls, count(*) FILTER (WHERE error IS NOT NULL) AS errors,
       quantile_cont(seconds, 0.5) AS p50_seconds, quantile_cont(seconds, 0.95) AS p95_seconds,
       avg(seconds) AS mean_seconds,
       sum(lm_calls) AS lm_calls,
       quantile_cont(prompt_tokens, 0.5) AS p50_prompt_tokens,
       quantile_cont(prompt_tokens, 0.95) AS p95_prompt_tokens, avg(prompt_tokens) AS mean_prompt_tokens,
       quantile_cont(completion_tokens, 0.5) AS p50_completion_tokens,
       quantile_cont(completion_tokens, 0.95) AS p95_completion_tokens,
       avg(completion_tokens) AS mean_completion_tokens
FROM node_calls GROUP BY node ORDER BY node""",
    # A human-approved node call: a correction (the latest wins, merged over what the node
    # produced), or labels whose latest word per reviewer and validator all passed.
    "approved_calls": """
WITH last_correction AS (
    SELECT * FROM corrections WHERE call_id IS NOT NULL
    QUALIFY row_number() OVER (PARTITION BY call_id ORDER BY created_at DESC, correction_id DESC) = 1),
last_labels AS (
    SELECT * FROM labels WHERE call_id IS NOT NULL AND passed IS NOT NULL
    QUALIFY row_number() OVER (PARTITION BY call_id, coalesce(validator, ''), coalesce(reviewer, '')
                               ORDER BY created_at DESC, label_id DESC) = 1),
approving AS (
    SELECT call_id, max(created_at) AS approved_at FROM last_labels GROUP BY call_id HAVING bool_and(passed))
SELECT c.call_id, c.trace_id, c.node, c.kind, c.position, c.inputs, c.output_field,
       CASE WHEN k.call_id IS NULL THEN c.outputs
            WHEN c.outputs IS NULL THEN k.outputs
            ELSE json_merge_patch(c.outputs, k.outputs) END AS outputs,
       CASE WHEN k.call_id IS NULL THEN 'label' ELSE 'correction' END AS approval,
       coalesce(k.created_at, a.approved_at) AS approved_at,
       k.reviewer AS corrected_by, k.comment AS correction_comment
FROM node_calls c
LEFT JOIN last_correction k ON k.call_id = c.call_id
LEFT JOIN approving a ON a.call_id = c.call_id
WHERE k.call_id IS NOT NULL OR a.call_id IS NOT NULL""",
}
VIEWS = tuple(_VIEWS)


def _m001_tables(con: Any) -> None:
    """The tables of the contract (experiments/store.py docstring)."""
    con.execute(_TABLES)


def _m002_views(con: Any) -> None:
    """The analysis views (pipec stats) and the approved calls (export, knn pool)."""
    for name, sql in _VIEWS.items():
        con.execute(f"CREATE OR REPLACE VIEW {name} AS {sql}")


# Append new migrations here (issue 10: the per-rubric judge agreement view with accuracy and
# Cohen's kappa over judge_human_pairs goes in as migration 3).
def _m003_judge_agreement(con: Any) -> None:
    """Issue 10: per judge rubric and day, accuracy and Cohen's kappa against the latest human label."""
    from experiments.alignment import JUDGE_AGREEMENT_SQL

    con.execute(f"CREATE OR REPLACE VIEW judge_agreement AS {JUDGE_AGREEMENT_SQL}")


def _m004_embedding_text(con: Any) -> None:
    """Embeddings are a cache: each vector keyed by its call, its embedding, and a digest of the text embedded."""
    con.execute("ALTER TABLE embeddings ADD COLUMN IF NOT EXISTS text_sha VARCHAR")


def _m005_lean_keys(con: Any) -> None:
    """``node_calls`` and ``verdicts`` without their primary keys, which cost appends much and
    guarded nothing: a call's id is its trace's id and its position, a batch verdict's id its call,
    validator and source, and ``traces`` (whose key stays) refuses a trace appended twice, in the
    same transaction as its calls and verdicts; other verdicts get new uuids. ``node_calls`` keeps
    an index on ``call_id`` (not unique), for the point lookups of the live demo pools, labels and
    corrections. DuckDB cannot drop a key: each table is copied (rows in their order) and replaced."""
    for table in ("node_calls", "verdicts"):
        con.execute(f"CREATE TABLE _pipec_{table}_v5 AS SELECT * FROM {table}")
        con.execute(f"DROP TABLE {table}")
        con.execute(f"ALTER TABLE _pipec_{table}_v5 RENAME TO {table}")
    con.execute("CREATE INDEX node_calls_call_id ON node_calls (call_id)")


MIGRATIONS: tuple[Callable[[Any], None], ...] = (_m001_tables, _m002_views, _m003_judge_agreement,
                                                 _m004_embedding_text, _m005_lean_keys)
SCHEMA_VERSION = len(MIGRATIONS)


def _first(cursor: Any) -> Any:
    """The first row of a result, read to the end (DuckDB refuses new work on an unfinished one)."""
    rows = cursor.fetchall()
    return rows[0] if rows else None


def _schema_version(con: Any) -> int:
    exists = _first(con.execute("SELECT count(*) FROM information_schema.tables "
                         "WHERE table_name = 'meta' AND table_schema = 'main'"))[0]
    if not exists:
        return 0
    row = _first(con.execute("SELECT value FROM meta WHERE key = 'schema_version'"))
    return int(row[0]) if row else 0


def migrate(con: Any, migrations: Sequence[Callable[[Any], None]] = MIGRATIONS) -> int:
    """Brings the database on ``con`` to ``len(migrations)``; returns the version it found.

    Raises:
        StoreError: The file was written by a newer pipec (a higher schema version).
    """
    found = _schema_version(con)
    if found > len(migrations):
        raise StoreError(f"the store was written by a newer pipec (schema version {found}, this pipec knows "
                         f"{len(migrations)}): upgrade pipec or pass --store OTHER")
    for number in range(found + 1, len(migrations) + 1):
        con.execute("BEGIN TRANSACTION")
        try:
            con.execute("CREATE TABLE IF NOT EXISTS meta (key VARCHAR PRIMARY KEY, value VARCHAR)")
            migrations[number - 1](con)
            con.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", [str(number)])
            if number == 1:
                con.execute("INSERT OR REPLACE INTO meta VALUES ('created_at', ?)", [datetime.now(UTC).isoformat()])
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        logger.info("store migrated to schema version %d", number)
    return found


# ---------------------------------------------------------------------------------------------
# Opening: DuckDB's file lock, translated.
# ---------------------------------------------------------------------------------------------

_PID = re.compile(r"PID (\d+)")


def _is_lock_error(exc: Exception) -> bool:
    text = str(exc)
    return "Could not set lock" in text or "Conflicting lock" in text


def _busy(path: Path, exc: Exception) -> StoreBusyError:
    found = _PID.search(str(exc))
    who = f" (pid {found.group(1)})" if found else ""
    return StoreBusyError(f"the store {path} is in use by another pipec process{who}; wait for it or pass "
                          "--store OTHER")


def _connect(path: Path, read_only: bool, wait: float) -> Any:
    """A DuckDB connection, retrying with backoff while another process holds the lock."""
    import duckdb

    deadline = time.monotonic() + max(wait, 0.0)
    delay = 0.05
    while True:
        try:
            return duckdb.connect(str(path), read_only=read_only)
        except duckdb.IOException as exc:
            if not _is_lock_error(exc):
                raise StoreError(f"cannot open the store {path}: {exc}; pass --store OTHER") from exc
            if time.monotonic() + delay > deadline:
                raise _busy(path, exc) from exc
            time.sleep(delay)
            delay = min(delay * 2, 0.5)
        except duckdb.ConnectionException as exc:
            if "different configuration" not in str(exc):
                raise StoreError(f"cannot open the store {path}: {exc}; pass --store OTHER") from exc
            # This process has the file open already, the other way. A reader shares the writer's
            # database (the Store refuses its writes); a writer cannot join readers.
            if read_only:
                return duckdb.connect(str(path))
            raise StoreError(f"this process has the store {path} open read-only; close that Store before "
                             "opening it for writing") from exc
        except duckdb.Error as exc:
            raise StoreError(f"cannot open the store {path}: {exc}; is it a pipec store? Pass --store OTHER") \
                from exc


def _now() -> datetime:
    return datetime.now(UTC)


def _utc(value: datetime | None) -> datetime:
    if value is None:
        return _now()
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _json_default(value: Any) -> Any:
    for attr in ("as_dict", "toDict", "model_dump"):
        method = getattr(value, attr, None)
        if callable(method):
            return method()
    if isinstance(value, datetime):
        return value.isoformat()
    if hasattr(value, "items"):
        return dict(value.items())
    return str(value)


def _make_encoder() -> Callable[[Any], str]:
    """A JSON encoder for many small values (ensure_ascii off: Japanese stays readable in the file).

    ``json.dumps(..., default=)`` builds an encoder per call, which costs as much as the encoding;
    the C encoder built once is what makes batch appends fast. Circular values raise RecursionError.
    """
    from json import encoder

    fallback = json.JSONEncoder(ensure_ascii=False, default=_json_default).encode
    if encoder.c_make_encoder is None:  # pragma: no cover - CPython always has the C encoder
        return fallback
    c_encode = encoder.c_make_encoder(None, _json_default, encoder.encode_basestring, None, ": ", ", ",
                                      False, False, True)

    def encode(value: Any) -> str:
        if isinstance(value, str):
            return fallback(value)
        return "".join(c_encode(value, 0))

    return encode


_encode = _make_encoder()


def _make_batch_encoder() -> Callable[[list[Any]], list[str | bytes]]:
    """The encoder of batch appends, a column at a time: orjson (a dependency of DSPy) where it
    can, else ``_encode``.

    orjson writes UTF-8 bytes (Japanese as is, compact separators) several times faster than the
    standard encoder. Objects it does not know go to the same ``_json_default``; datetimes (ISO
    8601) and dataclasses (their fields) it writes itself; what it refuses (keys that are not
    strings, integers beyond 64 bits) is written by ``_encode``. NaN becomes null (JSON has no NaN).
    Options cost: orjson's option flags take a slower path, so none are set. A column is one
    ``map`` over orjson without ``default``; a column holding a value orjson does not know is
    encoded again value by value, with it.
    """
    try:
        import orjson
    except ImportError:  # pragma: no cover - DSPy depends on orjson
        return lambda values: list(map(_encode, values))
    dumps, fallback, default = orjson.dumps, _encode, _json_default
    failure = orjson.JSONEncodeError

    def one(value: Any) -> str | bytes:
        try:
            return dumps(value, default=default)
        except failure:
            return fallback(value)

    def encode_all(values: list[Any]) -> list[str | bytes]:
        try:
            return list(map(dumps, values))  # plain values: no default to pass, the fastest call
        except failure:
            return list(map(one, values))

    return encode_all


_encode_batch = _make_batch_encoder()
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def _micros(value: datetime | None) -> int:
    """Microseconds since the epoch (exact: no float on the way); None is now."""
    return (_utc(value) - _EPOCH) // _MICROSECOND


def _json(value: Any) -> str | None:
    return None if value is None else _encode(value)


def _new_id() -> str:
    return uuid.uuid4().hex


class Store:
    """An open store. Use ``Store.open(...)`` as a context manager.

    One ``Store`` may be shared by threads (background judges): every statement holds its lock.

    Attributes:
        path: The DuckDB file.
        read_only: Whether it was opened read-only (``pipec stats``, ``pipec export``).
    """

    def __init__(self, con: Any, path: Path, read_only: bool) -> None:
        con.execute("SET enable_progress_bar = false")  # this connection only: no bars on the user's terminal
        if not read_only:
            # This file's database (not the process: another file opened in the same process keeps
            # its own): DuckDB checkpoints when the WAL passes this size, rewriting the table's
            # last row groups in the commit that crossed it. At DuckDB's 16 MB a 10,000-row batch
            # (6.7 MB of WAL) checkpoints every other commit, and a 50,000-row one every commit;
            # at 64 MB the checkpoints are four times rarer and DuckDB's work per row, the final
            # checkpoint at close included, measured ~20% lower (153-171 -> 132 ms of CPU per
            # 10,000 rows). The price: a process killed with a full WAL replays it on the next open
            # (~0.4 s for 60 MB, measured; committed rows are in the WAL either way), and a close
            # checkpoints up to 64 MB (~0.4 s).
            con.execute(f"SET checkpoint_threshold = '{CHECKPOINT_THRESHOLD}'")
        self._con = con
        self.path = path
        self.read_only = read_only
        self._lock = threading.RLock()

    @classmethod
    def open(cls, path: str | os.PathLike | None = None, *, read_only: bool = False,
             wait: float | None = None) -> Store:
        """Opens (creating and migrating if needed) the store at ``path`` (see ``default_store_path``).

        Args:
            path: The DuckDB file; ``$PIPEC_STORE`` or ``$PIPEC_HOME/store.duckdb`` when None.
            read_only: Open for reading; several readers may share the file, never with a writer.
            wait: Seconds to wait for another process that holds the file (default 3, or
                ``$PIPEC_STORE_WAIT``).

        Raises:
            StoreBusyError: Another process still holds the file after ``wait`` seconds.
            StoreError: The file is missing (read-only), not a DuckDB store, or from a newer pipec.
        """
        path = default_store_path(path)
        if wait is None:
            try:
                wait = float(os.environ.get("PIPEC_STORE_WAIT") or DEFAULT_WAIT_SECONDS)
            except ValueError as exc:
                raise StoreError(f"PIPEC_STORE_WAIT must be a number of seconds, got "
                                 f"{os.environ['PIPEC_STORE_WAIT']!r}") from exc
        if read_only:
            if not path.is_file():
                raise StoreError(f"no store at {path}: record calls first (pipec run, or evaluate with a store) "
                                 "or pass --store PATH")
            con = _connect(path, True, wait)
            try:
                version = _schema_version(con)
            except Exception:
                con.close()
                raise
            if version < SCHEMA_VERSION:  # an older file: migrate it once, read-write, then read
                con.close()
                with cls.open(path, wait=wait):
                    pass
                con = _connect(path, True, wait)
            elif version > SCHEMA_VERSION:
                con.close()
                raise StoreError(f"the store {path} was written by a newer pipec (schema version {version}, this "
                                 f"pipec knows {SCHEMA_VERSION}): upgrade pipec or pass --store OTHER")
            return cls(con, path, True)
        path.parent.mkdir(parents=True, exist_ok=True)
        con = _connect(path, False, wait)
        try:
            migrate(con)
        except Exception:
            con.close()
            raise
        return cls(con, path, False)

    def close(self) -> None:
        """Closes the connection (idempotent); a writer's committed rows are durable already."""
        with self._lock:
            if self._con is not None:
                self._con.close()
                self._con = None

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading ------------------------------------------------------------------------------

    def query(self, sql: str, params: Sequence[Any] | Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        """Runs ``sql`` and returns its rows as dicts; JSON columns come back decoded."""
        with self._lock:
            con = self._open_connection()
            cursor = con.execute(sql, params) if params is not None else con.execute(sql)
            description = cursor.description or []
            rows = cursor.fetchall()
        names = [d[0] for d in description]
        json_columns = [i for i, d in enumerate(description) if str(d[1]).upper() == "JSON"]
        out = []
        for row in rows:
            values = list(row)
            for i in json_columns:
                if isinstance(values[i], str):
                    values[i] = json.loads(values[i])
            out.append(dict(zip(names, values, strict=True)))
        return out

    def _open_connection(self) -> Any:
        if self._con is None:
            raise StoreError(f"the store {self.path} is closed: open it again with Store.open")
        return self._con

    def schema_version(self) -> int:
        with self._lock:
            return _schema_version(self._open_connection())

    def state(self) -> dict[str, Any]:
        """What the store holds: the schema version and the row count of every table."""
        counts = self.query("SELECT (SELECT count(*) FROM traces) AS traces, (SELECT count(*) FROM node_calls) "
                            "AS node_calls, (SELECT count(*) FROM verdicts) AS verdicts, (SELECT count(*) FROM "
                            "labels) AS labels, (SELECT count(*) FROM corrections) AS corrections, "
                            "(SELECT count(*) FROM embeddings) AS embeddings")[0]
        return {"path": str(self.path), "schema_version": self.schema_version(), **counts}

    # -- writing ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[Any]:
        if self.read_only:
            raise StoreError(f"the store {self.path} is open read-only")
        with self._lock:
            con = self._open_connection()
            con.execute("BEGIN TRANSACTION")
            try:
                yield con
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")

    @staticmethod
    def _insert(con: Any, table: str, columns: dict[str, tuple[Any, list[Any]]],
                computed: Mapping[str, str] | None = None) -> None:
        """Inserts one batch: an Arrow table of ``{column: (arrow type, values)}``, INSERT ... SELECT.

        ``computed`` maps further columns to SQL expressions over the batch's columns (DuckDB
        builds those strings, not Python); a batch column whose name starts with ``_`` only feeds
        such an expression and is not inserted.
        """
        import pyarrow as pa

        names = list(columns)
        if not names or not len(columns[names[0]][1]):
            return
        batch = pa.table({name: values if isinstance(values, pa.Array) else pa.array(values, type=kind)
                          for name, (kind, values) in columns.items()})
        view = f"_pipec_batch_{table}"
        con.register(view, batch)
        try:
            stored = [n for n in names if not n.startswith("_")]
            selected = [f"CAST({n} AS JSON)" if _JSON_COLUMNS.get((table, n)) and
                        batch.schema.field(n).type != _JSON_TYPE else n for n in stored]
            for name, expression in (computed or {}).items():
                stored.append(name)
                selected.append(expression)
            con.execute(f"INSERT INTO {table} ({', '.join(stored)}) SELECT {', '.join(selected)} FROM {view}")
        finally:
            with contextlib.suppress(Exception):  # a failed insert aborted the transaction; the caller rolls back
                con.unregister(view)

    def append_traces(self, traces: Sequence[Any], verdicts: Mapping[str, Mapping[str, Any]] | None = None, *,
                      mlflow_run_id: str | None = None, source: str = "run", program: str | None = None,
                      verdict_source: str = "rule") -> int:
        """Appends traces with their node calls and verdicts, as one transaction.

        Args:
            traces: ``experiments.runner.Trace`` objects (or anything with the same fields).
            verdicts: ``{trace_id: {node: Verdict}}``; a node may also map to ``{validator: Verdict}``.
                Each verdict is attached to the node's last call in the trace.
            mlflow_run_id: The MLflow run the traces belong to.
            source: ``run``, ``evaluate``, ``compile`` or ``import``.
            program: The program file the traces ran, when there is one.
            verdict_source: The source recorded on the verdicts (``rule``, ``judge``, ``guard``).

        Returns:
            The number of node-call rows written.
        """
        import numpy as np
        import pyarrow as pa

        if verdict_source not in _VERDICT_SOURCES:
            raise StoreError(f"verdict source {verdict_source!r} is not one of: {', '.join(_VERDICT_SOURCES)}")
        text, num, integer, flag = pa.string(), pa.float64(), pa.int32(), pa.bool_()
        traces = list(traces)
        n_traces = len(traces)
        # Column by column: the fields of the objects read in one pass into a list per field
        # (``_trace_columns``, ``_call_columns``, ``_verdict_columns``); the JSON of a column encoded by
        # one orjson call (``_json_column``); the ids (call, verdict) joined by DuckDB in the INSERT
        # (``computed``), not by Python.
        (trace_ids, per_trace, t_outputs, started, t_pipeline, t_version, t_inputs, t_error, t_error_kind,
         t_seconds) = _trace_columns(traces)
        trace_ids = list(map(str, trace_ids))
        created = pa.array(np.fromiter(map(_micros, started), dtype=np.int64, count=n_traces)).cast(_TS)
        if None in per_trace:
            per_trace = [cs or () for cs in per_trace]
        counts = np.fromiter(map(len, per_trace), dtype=np.int64, count=n_traces)
        calls = list(chain.from_iterable(per_trace))
        trace_index = np.repeat(np.arange(n_traces), counts)
        id_array = pa.array(trace_ids, text)
        t_cols = {
            "trace_id": (text, id_array),
            "pipeline": (text, t_pipeline),
            "program": (text, pa.array([program] * n_traces, text) if program
                        else [getattr(t, "program", None) for t in traces]),
            "program_version": (text, t_version),
            "mlflow_run_id": (text, pa.nulls(n_traces, text) if mlflow_run_id is None
                              else pa.array([mlflow_run_id] * n_traces, text)),
            "source": (text, pa.array([source] * n_traces, text)),
            "inputs": (text, _json_column([i or _EMPTY_OBJECT for i in t_inputs])),
            "outputs": (text, _json_column(t_outputs)),
            "error": (text, t_error),
            "error_kind": (text, t_error_kind),
            "seconds": (num, [float(x or 0.0) for x in t_seconds]),
            "created_at": (_TS, created),
        }
        (node, kind, position, c_inputs, c_outputs, output_field, c_error, c_seconds, lm_calls, prompt_tokens,
         completion_tokens, demos, lm_error) = _call_columns(calls)
        c_cols = {
            "trace_id": (text, id_array.take(trace_index)),
            "node": (text, node),
            "kind": (text, kind),
            "position": (integer, position),
            "inputs": (text, _json_column(c_inputs)),
            "outputs": (text, _json_column(c_outputs, None if None not in c_outputs else
                                           [o is not None for o in c_outputs])),
            "output_field": (text, output_field),
            "error": (text, c_error),
            "seconds": (num, c_seconds),
            "lm_calls": (integer, lm_calls),
            "prompt_tokens": (integer, prompt_tokens),
            "completion_tokens": (integer, completion_tokens),
            "demos": (text, _json_column([d or () for d in demos])),
            "created_at": (_TS, created.take(trace_index)),
            "lm_error": (flag, list(map(bool, lm_error))),
        }
        # Verdicts: one row per (trace, node, validator), on the node's last call in the trace; the
        # verdict id is the call (or trace and node), validator and source.
        judged = list(map(verdicts.get, trace_ids)) if verdicts else []
        v_index = [i for i, per_node in enumerate(judged) if per_node for _ in per_node]
        v_node = list(chain.from_iterable(filter(None, judged)))
        judged_by = [verdict for per_node in judged if per_node for verdict in per_node.values()]
        if any(map(_is_mapping, map(type, judged_by))):  # {validator: Verdict} on some node: one row each
            v_index, v_node, v_validator, judged_by = _per_validator(v_index, v_node, judged_by)
        else:
            v_validator = ["node"] * len(judged_by)
        v_position = _last_positions(trace_index, node, position, v_index, v_node)
        score, passed, counted, feedback, details = _verdict_columns(judged_by)
        v_at = pa.array(v_index, pa.int64())
        v_cols = {
            "trace_id": (text, id_array.take(v_at)),
            "node": (text, v_node), "validator": (text, v_validator), "_position": (integer, v_position),
            "source": (text, pa.array([verdict_source] * len(judged_by), text)),
            "score": (num, [None if x is None else float(x) for x in score]),
            "passed": (flag, list(map(bool, passed))),
            "counted": (flag, list(map(bool, counted))),
            "feedback": (text, feedback),
            "details": (text, _json_column([x or _EMPTY_OBJECT for x in details])),
            "created_at": (_TS, created.take(v_at)),
        }
        call_id = "trace_id || '/' || _position"
        with self._transaction() as con:
            self._insert(con, "traces", t_cols)
            self._insert(con, "node_calls", c_cols, {"call_id": "trace_id || '/' || position"})
            self._insert(con, "verdicts", v_cols, {
                "call_id": call_id,
                "verdict_id": f"coalesce({call_id}, trace_id || '/' || node) || ':' || validator || ':' || source"})
        return len(calls)

    def _insert_verdicts(self, con: Any, rows: Sequence[Mapping[str, Any]]) -> None:
        import pyarrow as pa

        cols: dict[str, list[Any]] = {k: [] for k in _VERDICT_COLUMNS}
        for row in rows:
            source = row.get("source") or "rule"
            if source not in _VERDICT_SOURCES:
                raise StoreError(f"verdict source {source!r} is not one of: {', '.join(_VERDICT_SOURCES)}")
            score = row.get("score")
            cols["verdict_id"].append(str(row.get("verdict_id") or _new_id()))
            for key in ("trace_id", "call_id", "node", "validator", "feedback"):
                cols[key].append(row.get(key))
            cols["source"].append(source)
            cols["score"].append(None if score is None else float(score))
            cols["passed"].append(None if row.get("passed") is None else bool(row["passed"]))
            cols["counted"].append(bool(row.get("counted", True)))
            cols["details"].append(_json(row.get("details") or {}))
            cols["created_at"].append(_utc(row.get("created_at")))
        types = {"score": pa.float64(), "passed": pa.bool_(), "counted": pa.bool_(),
                 "created_at": pa.timestamp("us", tz="UTC")}
        self._insert(con, "verdicts", {k: (types.get(k, pa.string()), v) for k, v in cols.items()})

    def add_verdicts(self, rows: Iterable[Mapping[str, Any]]) -> int:
        """Appends verdicts (background judges, guards, humans) in one transaction.

        Each row holds ``trace_id``, ``node``, ``source`` (rule|judge|guard|human), ``passed``, and
        optionally ``call_id`` (found from ``node`` when missing: its last call in the trace),
        ``validator``, ``score``, ``counted``, ``feedback``, ``details``, ``created_at``.
        """
        rows = [dict(r) for r in rows]
        if not rows:
            return 0
        with self._transaction() as con:
            for row in rows:
                if row.get("call_id") is None and row.get("node") is not None:
                    row["call_id"] = self._call_of(con, row["trace_id"], row["node"])
            self._insert_verdicts(con, rows)
        return len(rows)

    @staticmethod
    def _call_of(con: Any, trace_id: str, node: str) -> str | None:
        found = _first(con.execute("SELECT call_id FROM node_calls WHERE trace_id = ? AND node = ? "
                                   "ORDER BY position DESC LIMIT 1", [trace_id, node]))
        return found[0] if found else None

    def _resolve_call(self, con: Any, trace_id: str, call_id: str | None, node: str | None) -> tuple[str, str]:
        if call_id is not None:
            found = _first(con.execute("SELECT node FROM node_calls WHERE call_id = ? AND trace_id = ?",
                                       [call_id, trace_id]))
            if not found:
                raise StoreError(f"no node call {call_id!r} in trace {trace_id!r} in the store {self.path}")
            return call_id, found[0]
        if node is None:
            raise StoreError("a label or correction needs the node call: pass call_id or node")
        call = self._call_of(con, trace_id, node)
        if call is None:
            raise StoreError(f"trace {trace_id!r} has no call of node {node!r} in the store {self.path}")
        return call, node

    def add_label(self, trace_id: str, *, passed: bool | None, call_id: str | None = None, node: str | None = None,
                  validator: str | None = None, reviewer: str | None = None, score: int | None = None,
                  comment: str | None = None, created_at: datetime | None = None) -> str:
        """Records a human's label on a node call (by ``call_id``, or ``node``: its last call).

        Returns:
            The new label's id.
        """
        if score is not None and not (isinstance(score, int) and 1 <= score <= 5):
            raise StoreError(f"a label's score is an integer from 1 to 5, got {score!r}")
        label_id = _new_id()
        with self._transaction() as con:
            call_id, node = self._resolve_call(con, trace_id, call_id, node)
            con.execute("INSERT INTO labels VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        [label_id, trace_id, call_id, node, validator, reviewer, passed, score, comment,
                         _utc(created_at)])
        return label_id

    def add_correction(self, trace_id: str, outputs: Mapping[str, Any], *, call_id: str | None = None,
                       node: str | None = None, reviewer: str | None = None, comment: str | None = None,
                       created_at: datetime | None = None) -> str:
        """Records a human's corrected output fields of a node call; the latest correction wins.

        Returns:
            The new correction's id.
        """
        if not isinstance(outputs, Mapping) or not outputs:
            raise StoreError("a correction needs the corrected output fields as a non-empty mapping, e.g. "
                             "{'category': 'billing'}")
        correction_id = _new_id()
        with self._transaction() as con:
            call_id, node = self._resolve_call(con, trace_id, call_id, node)
            con.execute("INSERT INTO corrections VALUES (?, ?, ?, ?, ?, CAST(? AS JSON), ?, ?)",
                        [correction_id, trace_id, call_id, node, reviewer, _json(dict(outputs)), comment,
                         _utc(created_at)])
        return correction_id

    def add_embeddings(self, call_ids: Sequence[str], embedding: str, vectors: Any,
                       text_shas: Sequence[str | None] | None = None) -> int:
        """Appends one batch of vectors (``embedding`` names the model) for node calls.

        Args:
            call_ids: The node calls.
            embedding: The embedding's name.
            vectors: One vector per call (a 2-D array, or sequences of floats).
            text_shas: The digest of each text embedded (``embedding_vectors`` finds a vector by it).
        """
        import numpy as np
        import pyarrow as pa

        if len(call_ids) != len(vectors):
            raise StoreError(f"{len(call_ids)} call ids for {len(vectors)} vectors")
        if text_shas is not None and len(text_shas) != len(call_ids):
            raise StoreError(f"{len(call_ids)} call ids for {len(text_shas)} text digests")
        if not len(call_ids):
            return 0
        rows = [np.asarray(v, dtype=np.float32).reshape(-1) for v in vectors]
        lengths = np.fromiter(map(len, rows), dtype=np.int32, count=len(rows))
        offsets = np.concatenate([np.zeros(1, dtype=np.int32), np.cumsum(lengths, dtype=np.int32)])
        flat = np.concatenate(rows) if rows else np.zeros(0, dtype=np.float32)
        now = _now()
        with self._transaction() as con:
            self._insert(con, "embeddings", {
                "call_id": (pa.string(), list(call_ids)), "embedding": (pa.string(), [embedding] * len(call_ids)),
                "vector": (pa.list_(pa.float32()), pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat))),
                "created_at": (pa.timestamp("us", tz="UTC"), [now] * len(call_ids)),
                "text_sha": (pa.string(), list(text_shas) if text_shas is not None else [None] * len(call_ids))})
        return len(call_ids)

    def embedding_vectors(self, embedding: str, keys: Sequence[tuple[str, str]]) -> tuple[Any, Any]:
        """The stored vectors of ``embedding`` for ``(call_id, text_sha)`` keys.

        One join of the keys (an Arrow table) with the embeddings table.

        Returns:
            ``(rows, matrix)``: ``rows[i]`` is the row of ``matrix`` (float32, one vector per row)
            holding the vector of ``keys[i]``, or -1 when none is stored. Vectors of another length
            than the most common one (an older version of the embedding) are left out.
        """
        import numpy as np
        import pyarrow as pa

        rows = np.full(len(keys), -1, dtype=np.int64)
        if not keys:
            return rows, np.zeros((0, 0), dtype=np.float32)
        wanted = pa.table({"call_id": pa.array([k[0] for k in keys], pa.string()),
                           "text_sha": pa.array([k[1] for k in keys], pa.string()),
                           "i": pa.array(np.arange(len(keys), dtype=np.int64))})
        view = "_pipec_embedding_keys"
        with self._lock:
            con = self._open_connection()
            con.register(view, wanted)
            try:
                found = con.sql(
                    f"SELECT k.i, e.vector FROM embeddings e JOIN {view} k "
                    "ON k.call_id = e.call_id AND k.text_sha = e.text_sha WHERE e.embedding = $embedding",
                    params={"embedding": embedding}).to_arrow_table()
            finally:
                with contextlib.suppress(Exception):
                    con.unregister(view)
        if not found.num_rows:
            return rows, np.zeros((0, 0), dtype=np.float32)
        column = found.column("vector").combine_chunks()
        lengths = np.diff(column.offsets.to_numpy())
        dim = int(np.bincount(lengths).argmax())
        keep = np.flatnonzero(lengths == dim)
        flat = column.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
        if len(keep) == len(lengths):
            matrix = flat.reshape(len(lengths), dim)
        else:
            starts = column.offsets.to_numpy()[keep]
            matrix = flat[starts[:, None] + np.arange(dim)]
        rows[found.column("i").to_numpy()[keep]] = np.arange(len(keep))  # a key stored twice: either vector
        return rows, matrix


_CALL_FIELDS = ("node", "kind", "position", "inputs", "outputs", "output_field", "error", "seconds", "lm_calls",
                "prompt_tokens", "completion_tokens", "demos", "lm_error")  # programs.trace.NodeCall
_TRACE_FIELDS = ("pipeline", "program_version", "inputs", "error", "error_kind", "seconds")  # runner.Trace
_VERDICT_FIELDS = ("score", "passed", "counted", "feedback", "details")  # metrics.verdict.Verdict
_TRACE_COLUMNS = ("trace_id", "pipeline", "program", "program_version", "mlflow_run_id", "source", "inputs",
                  "outputs", "error", "error_kind", "seconds", "created_at")
_CALL_COLUMNS = ("call_id", "trace_id", "node", "kind", "position", "inputs", "outputs", "output_field", "error",
                 "seconds", "lm_calls", "prompt_tokens", "completion_tokens", "demos", "created_at", "lm_error")
_VERDICT_COLUMNS = ("verdict_id", "trace_id", "call_id", "node", "validator", "source", "score", "passed",
                    "counted", "feedback", "details", "created_at")
_VERDICT_SOURCES = ("rule", "judge", "guard", "human")
def _trace_columns(traces: list[Any]) -> tuple[list[Any], ...]:
    """``trace_id, calls, outputs, started_at`` and ``_TRACE_FIELDS`` of each trace, a list per field.

    A trace object without ``calls``, ``started_at`` or one of ``_TRACE_FIELDS`` gives None for it
    (its id and outputs it must have).

    One pass, each object's fields read in turn and appended to their lists: measured 2-3 times
    faster than a pass per field (33-58 ms for 10,000 node calls, against 11-14) or a tuple per
    object (``attrgetter`` of several fields, 22-40 ms: the tuples set off garbage collections that
    traverse them all). Reading ``__dict__`` instead would make Python build a dict per object.
    """
    cols: tuple[list[Any], ...] = tuple([] for _ in range(10))
    (trace_id, calls, outputs, started_at, pipeline, program_version, inputs, error, error_kind,
     seconds) = (c.append for c in cols)
    try:
        for t in traces:
            trace_id(t.trace_id)
            calls(t.calls)
            outputs(t.outputs)
            started_at(t.started_at)
            pipeline(t.pipeline)
            program_version(t.program_version)
            inputs(t.inputs)
            error(t.error)
            error_kind(t.error_kind)
            seconds(t.seconds)
    except AttributeError:  # a trace object that lacks an optional field: read each with a default
        cols = tuple([] for _ in range(10))
        for t in traces:
            for column, value in zip(cols, (t.trace_id, getattr(t, "calls", None), t.outputs,
                                            getattr(t, "started_at", None),
                                            *(getattr(t, name, None) for name in _TRACE_FIELDS)), strict=True):
                column.append(value)
    return cols


def _call_columns(calls: list[Any]) -> tuple[list[Any], ...]:
    """``_CALL_FIELDS`` of each node call, a list per field, in one pass (see ``_trace_columns``)."""
    cols: tuple[list[Any], ...] = tuple([] for _ in _CALL_FIELDS)
    (node, kind, position, inputs, outputs, output_field, error, seconds, lm_calls, prompt_tokens,
     completion_tokens, demos, lm_error) = (c.append for c in cols)
    for c in calls:
        node(c.node)
        kind(c.kind)
        position(c.position)
        inputs(c.inputs)
        outputs(c.outputs)
        output_field(c.output_field)
        error(c.error)
        seconds(c.seconds)
        lm_calls(c.lm_calls)
        prompt_tokens(c.prompt_tokens)
        completion_tokens(c.completion_tokens)
        demos(c.demos)
        lm_error(c.lm_error)
    return cols


def _verdict_columns(verdicts: list[Any]) -> tuple[list[Any], ...]:
    """``_VERDICT_FIELDS`` of each verdict, a list per field, in one pass (see ``_trace_columns``)."""
    cols: tuple[list[Any], ...] = tuple([] for _ in _VERDICT_FIELDS)
    score, passed, counted, feedback, details = (c.append for c in cols)
    for v in verdicts:
        score(v.score)
        passed(v.passed)
        counted(v.counted)
        feedback(v.feedback)
        details(v.details)
    return cols


def _last_positions(call_trace: Any, call_node: Sequence[str], call_position: Sequence[int],
                    trace: Sequence[int], node: Sequence[str]) -> Any:
    """The position of the last call of ``node[i]`` in trace ``trace[i]`` (a later call of a node in
    a trace wins over an earlier one), null where the trace has no call of that node.

    Each (trace, node) is one integer (the trace's index times the node count, plus the node's
    number): numpy sorts the calls' keys and finds the verdicts' among them, no tuple or dict per row.
    """
    import numpy as np
    import pyarrow as pa

    if not len(node) or not len(call_node):
        return pa.nulls(len(node), pa.int32())
    codes = {name: k for k, name in enumerate(dict.fromkeys(call_node))}
    width = len(codes) + 1  # the last number: a node with no call in the batch
    keys = np.asarray(call_trace, dtype=np.int64) * width + np.fromiter(
        map(codes.__getitem__, call_node), dtype=np.int64, count=len(call_node))
    wanted = np.asarray(trace, dtype=np.int64) * width + np.fromiter(
        map(codes.get, node, repeat(width - 1)), dtype=np.int64, count=len(node))
    order = np.argsort(keys, kind="stable")
    keys = keys[order]
    last = np.append(keys[1:] != keys[:-1], True)  # the last of each run of equal keys: the latest call
    keys, positions = keys[last], np.asarray(call_position, dtype=np.int64)[order][last]
    at = np.minimum(np.searchsorted(keys, wanted), len(keys) - 1)
    found = keys[at] == wanted
    return pa.array(positions[at], pa.int32(), mask=~found)


def _per_validator(index: list[int], nodes: list[str], judged: list[Any]) -> tuple[list[Any], ...]:
    """Verdict rows where a node maps to ``{validator: Verdict}``: one row per validator (a bare
    ``Verdict`` is validator ``node``)."""
    out: tuple[list[Any], ...] = ([], [], [], [])
    for i, node, verdict in zip(index, nodes, judged, strict=True):
        for validator, one in (verdict.items() if _is_mapping(type(verdict)) else (("node", verdict),)):
            for column, value in zip(out, (i, node, validator, one), strict=True):
                column.append(value)
    return out


@functools.cache
def _is_mapping(kind: type) -> bool:
    """``isinstance(x, Mapping)`` by ``x``'s type, remembered (the ABC check costs as much as a row)."""
    return issubclass(kind, Mapping)


_EMPTY_OBJECT: Mapping[str, Any] = {}  # a verdict's details when it has none (never mutated)


def _arrow_types() -> tuple[Any, Any]:
    import pyarrow as pa

    return pa.timestamp("us", tz="UTC"), pa.json_()


_TS, _JSON_TYPE = _arrow_types()


def _json_array(encoded: list[str | bytes], valid: list[bool] | None = None) -> Any:
    """Encoded JSON texts as an Arrow ``json`` column: DuckDB takes it as JSON, no text-to-JSON cast.

    ``valid`` False makes a value NULL. The column is built by Arrow from the list, not value by value.
    """
    import numpy as np
    import pyarrow as pa

    mask = None if valid is None else ~np.asarray(valid, dtype=bool)
    storage = pa.array(encoded, pa.binary(), mask=mask).cast(pa.string())  # the cast checks the UTF-8
    return pa.ExtensionArray.from_storage(_JSON_TYPE, storage)


def _json_column(values: Sequence[Any], valid: Sequence[bool] | None = None) -> Any:
    """``values`` as an Arrow ``json`` column: the whole list encoded by one orjson call, with a NUL
    byte between the values (``_separated``), then cut at the NULs (``_split_json_list``), without
    a Python object per value.

    One orjson call per value costs ten times more than one call for the list (each call allocates
    a 1 KB buffer outside Python's allocator, then shrinks it: measured 3.8 µs against 0.2 µs per
    value). The bytes stored are the same as one call per value would give. A list orjson cannot
    encode whole (a key that is not a string, an integer beyond 64 bits) goes through
    ``_encode_batch``, value by value.
    """
    import pyarrow as pa

    storage = None
    if _SEPARATOR is not None:
        try:
            data = _dumps(_separated(values))
        except _DUMPS_ERROR:
            try:
                data = _dumps(_separated(values), default=_json_default)
            except _DUMPS_ERROR:
                data = None
        if data is not None:
            storage = _split_json_list(data, len(values), valid)
    if storage is None:  # no orjson, or a value it refuses: value by value
        return _json_array(_encode_batch(list(values)), None if valid is None else list(valid))
    return pa.ExtensionArray.from_storage(pa.json_(storage.type), storage)


def _orjson() -> tuple[Any, Any, Any]:
    try:
        import orjson
    except ImportError:  # pragma: no cover - DSPy depends on orjson
        return None, None, None
    # A fragment is written as it is: a NUL byte, which orjson never writes itself (a string's
    # control characters are escaped as \u0000 and the like, and there are none outside strings).
    return orjson.dumps, orjson.JSONEncodeError, orjson.Fragment(b"\x00")


_dumps, _DUMPS_ERROR, _SEPARATOR = _orjson()


def _separated(values: Sequence[Any]) -> list[Any]:
    """``[v0, SEP, v1, SEP, ..., vN]``: orjson writes it as ``[v0,<NUL>,v1,<NUL>,...,vN]``."""
    out = [_SEPARATOR] * (2 * len(values) - 1) if values else []
    out[::2] = values
    return out


def _split_json_list(data: bytes, n: int, valid: Sequence[bool] | None = None) -> Any:
    """The ``n`` values of orjson's encoding of ``_separated(values)`` as an Arrow string array: the
    bytes without the brackets and the ``,NUL,`` between the values, and offsets; None when the
    text is not ``n`` values so separated.

    A NUL byte is found by one comparison over the bytes: no parsing of strings, escapes or
    nesting (measured ~4x cheaper than finding the top-level commas).
    """
    import numpy as np
    import pyarrow as pa

    raw = np.frombuffer(data, dtype=np.uint8)
    if len(raw) < 2 or raw[0] != _OPEN or raw[-1] != _CLOSE:
        return None
    nul = np.flatnonzero(raw == 0)
    if len(nul) != max(n - 1, 0) or (len(nul) and ((raw[nul - 1] != _COMMA).any() or (raw[nul + 1] != _COMMA).any())):
        return None
    if n == 0:
        return pa.array([], pa.string()) if len(raw) == 2 else None
    keep = np.ones(len(raw), dtype=bool)
    keep[0] = keep[-1] = False
    keep[nul - 1] = keep[nul] = keep[nul + 1] = False
    body = raw[keep]
    offsets = np.empty(n + 1, dtype=np.int64)
    offsets[0], offsets[n] = 0, len(body)
    offsets[1:n] = nul - 3 * np.arange(n - 1) - 2  # value i+1 starts at NUL i + 2, less the bracket and i+1 separators
    large = len(body) >= 2**31
    validity = None if valid is None else pa.py_buffer(np.packbits(np.asarray(valid, dtype=bool), bitorder="little"))
    nulls = -1 if valid is None else n - int(np.count_nonzero(valid))
    return pa.Array.from_buffers(pa.large_string() if large else pa.string(), n,
                                 [validity, pa.py_buffer(offsets if large else offsets.astype(np.int32)),
                                  pa.py_buffer(body)], null_count=nulls)


_OPEN, _CLOSE, _COMMA = map(ord, "[],")


_JSON_COLUMNS = {(t, c): "json" for t, c in (("traces", "inputs"), ("traces", "outputs"), ("node_calls", "inputs"),
                                             ("node_calls", "outputs"), ("node_calls", "demos"),
                                             ("verdicts", "details"))}


# ---------------------------------------------------------------------------------------------
# Closing the loop: store rows as a trainset.
# ---------------------------------------------------------------------------------------------

class StoreFilter:
    """Which traces become training rows: ``approved`` (human-approved or corrected only), ``node``
    (the node that must be approved, or present), ``pipeline`` (the traces' pipeline)."""

    def __init__(self, *, approved: bool = False, node: str | None = None, pipeline: str | None = None) -> None:
        self.approved, self.node, self.pipeline = approved, node, pipeline

    def as_dict(self) -> dict[str, Any]:
        return {"approved": self.approved, "node": self.node, "pipeline": self.pipeline}


def parse_store_spec(spec: str) -> StoreFilter:
    """``store:`` / ``store:approved`` / ``store:approved,node=classify,pipeline=triage`` -> a filter.

    Raises:
        DatasetError: An unknown filter.
    """
    from programs.errors import DatasetError

    if not spec.startswith("store:"):
        raise DatasetError(f"not a store trainset: {spec!r}; write store: or store:approved,node=NAME")
    found = StoreFilter()
    for part in filter(None, (p.strip() for p in spec[len("store:"):].split(","))):
        key, _, value = part.partition("=")
        if key == "approved" and not value:
            found.approved = True
        elif key in ("node", "pipeline") and value:
            setattr(found, key, value)
        else:
            raise DatasetError(f"unknown store filter {part!r} in {spec!r}; use approved, node=NAME, pipeline=NAME "
                               "separated by commas (e.g. store:approved,node=classify)")
    return found


def _gold_map(pipeline: Any, calls: Iterable[Mapping[str, Any]]) -> tuple[tuple[str, ...] | None, dict[str, str]]:
    """``(input fields, {node: example field})``: the pipeline's declaration, else each node's output field."""
    if pipeline is not None:
        return tuple(pipeline.inputs), dict(pipeline.gold)
    return None, {c["node"]: c["output_field"] for c in calls}


def export_rows(store: Store, filt: StoreFilter | None = None, *, pipeline: Any = None) -> list[dict[str, Any]]:
    """The training rows the store holds: one per trace, its input fields and each node's gold field.

    A node's gold value is its corrected output when a human corrected it, else its approved
    output; without ``filt.approved``, a node nobody reviewed contributes what it produced when
    it did not fail (no error, no failed verdict, no failing label). A trace is left out when a gold field has no
    value, or (``approved``) when the nodes concerned (``filt.node``, else every gold node) are
    not all approved.

    Args:
        store: An open store.
        filt: Which traces.
        pipeline: The pipeline object (``programs.loader.make_pipeline``), for its input and gold
            fields; without it, each trace's recorded pipeline is loaded for them, and when that
            fails, every recorded input and each node's output field are used.

    Returns:
        Rows in recording order, each with a ``trace_id`` field beside the pipeline's fields.
    """
    filt = filt or StoreFilter()
    where, params = ["t.error_kind IS DISTINCT FROM 'rejected'"], []
    if filt.pipeline:
        where.append("t.pipeline = ?")
        params.append(filt.pipeline)
    calls = store.query(f"""
        SELECT t.trace_id, t.pipeline, t.inputs AS trace_inputs, c.call_id, c.node, c.output_field, c.outputs, c.error,
               a.outputs AS approved_outputs, a.approval,
               o.failed OR EXISTS (SELECT 1 FROM labels l WHERE l.call_id = c.call_id AND NOT l.passed) AS failed
        FROM traces t
        JOIN node_calls c ON c.trace_id = t.trace_id
        JOIN call_outcomes o ON o.call_id = c.call_id
        LEFT JOIN approved_calls a ON a.call_id = c.call_id
        WHERE {" AND ".join(f"({w})" for w in where)}
        QUALIFY row_number() OVER (PARTITION BY c.trace_id, c.node ORDER BY c.position DESC) = 1
        ORDER BY t.created_at, t.trace_id, c.position""", params)
    by_trace: dict[str, list[dict[str, Any]]] = {}
    for call in calls:
        by_trace.setdefault(call["trace_id"], []).append(call)
    declared: dict[str, Any] = {}

    def declaration(name: str | None) -> Any:
        if pipeline is not None or not name:
            return pipeline
        if name not in declared:
            from programs.loader import make_pipeline

            try:
                declared[name] = make_pipeline(name)
            except Exception as exc:  # a pipeline that no longer loads: fall back to the recorded fields
                logger.warning("pipeline %r does not load (%s); exporting each node's output field", name, exc)
                declared[name] = None
        return declared[name]

    rows = []
    for trace_id, trace_calls in by_trace.items():
        inputs, gold = _gold_map(declaration(trace_calls[0]["pipeline"]), trace_calls)
        node_calls = {c["node"]: c for c in trace_calls}
        if filt.node is not None and filt.node not in node_calls:
            continue
        must_approve = ({filt.node} if filt.node else set(gold)) if filt.approved else set()
        if any(node_calls.get(n, {}).get("approved_outputs") is None for n in must_approve):
            continue
        trace_inputs = trace_calls[0]["trace_inputs"] or {}
        row = {k: trace_inputs.get(k) for k in inputs} if inputs is not None else dict(trace_inputs)
        complete = True
        for node, field in gold.items():
            call = node_calls.get(node)
            value = None
            if call is not None:
                outputs = call["approved_outputs"]
                if outputs is None and not call["failed"]:
                    outputs = call["outputs"]
                value = (outputs or {}).get(call["output_field"])
            if value is None:
                complete = False
                break
            row[field] = value
        if complete:
            row["trace_id"] = trace_id
            rows.append(row)
    return rows


def trace_ids_digest(trace_ids: Iterable[str]) -> str:
    """The sha256 of the sorted trace ids, one per line: which store rows a compile used."""
    return hashlib.sha256("\n".join(sorted(trace_ids)).encode("utf-8")).hexdigest()


def store_dataset_rows(spec: str, pipeline: Any, *, store: str | os.PathLike | None = None,
                       default_pipeline: str | None = None) -> tuple[list[tuple[int, dict[str, Any]]], dict[str, Any]]:
    """The rows of a ``store:...`` trainset for ``experiments.datasets.load_dataset``, and what was read.

    Args:
        spec: ``store:`` with filters (``parse_store_spec``).
        pipeline: The pipeline object (its input and gold fields).
        store: The store file (``default_store_path``).
        default_pipeline: The traces' pipeline when the spec names none (the pipeline compiled).

    Returns:
        ``([(row number, row)], provenance)``; the provenance holds the store's path, schema version,
        row counts, the filter, and the count and sha256 of the trace ids used.
    """
    from programs.errors import DatasetError

    filt = parse_store_spec(spec)
    if filt.pipeline is None:
        filt.pipeline = default_pipeline
    with Store.open(store, read_only=True) as opened:
        state = opened.state()
        rows = export_rows(opened, filt, pipeline=pipeline)
        if not rows:
            pipelines = [r["pipeline"] for r in opened.query("SELECT DISTINCT pipeline FROM traces ORDER BY 1")]
    if not rows:
        raise DatasetError(f"the store {state['path']} holds no training rows for {spec} "
                           f"(pipeline {filt.pipeline!r}; pipelines recorded: {pipelines or 'none'}): record calls "
                           "with pipec run, label or correct them, or pass store:pipeline=NAME")
    ids = [r["trace_id"] for r in rows]
    provenance = {"spec": spec, "filter": filt.as_dict(), "rows": len(rows), "trace_ids_sha256": trace_ids_digest(ids),
                  **{f"state.{k}": v for k, v in state.items()}}
    return list(enumerate(rows, start=1)), provenance


# ---------------------------------------------------------------------------------------------
# pipec stats: the views, read.
# ---------------------------------------------------------------------------------------------

# (view, title, columns, row limit or None): what `pipec stats` shows, in order. Issue 10 adds its
# per-rubric judge agreement view (accuracy, Cohen's kappa) here, after its migration.
STATS_VIEWS: tuple[tuple[str, str, str, int | None], ...] = (
    ("pass_rate_daily", "Pass rate per node per day", "*", None),
    ("judge_agreement", "Judge rubrics vs humans: accuracy and Cohen's kappa (day empty: all time)",
     "validator, day, n, accuracy, kappa, judge_pass_rate, human_pass_rate", None),
    ("error_accumulation", "Error accumulation: where failing traces first went wrong", "*", None),
    ("node_latency", "Latency (s) and tokens per node call",
     "node, calls, errors, p50_seconds, p95_seconds, mean_seconds, p50_prompt_tokens, p95_prompt_tokens, "
     "mean_prompt_tokens, p50_completion_tokens, p95_completion_tokens, mean_completion_tokens", None),
    ("judge_human_agreement", "Judge vs human, per node and validator", "*", None),
    ("judge_human_disagreements", "Latest judge/human disagreements",
     "trace_id, node, validator, judge_passed, human_passed, reviewer, comment, judge_feedback", 20),
)


def store_stats(store: Store) -> dict[str, Any]:
    """What ``pipec stats`` prints: the store's state and the rows of each view in ``STATS_VIEWS``."""
    found: dict[str, Any] = {"store": store.state()}
    for view, _, columns, limit in STATS_VIEWS:
        found[view] = store.query(f"SELECT {columns} FROM {view}" + (f" LIMIT {int(limit)}" if limit else ""))
    return found
