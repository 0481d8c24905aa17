"""Read-only execution of generated SQL against a DuckDB database file.

Used by SQL pipelines at run time (to feed a query's result to the next node) and by the
code-generator validators. Errors are data here, not exceptions: a failed query is an answer
the next step can read and a validator can turn into feedback.

Generated SQL is untrusted, so it runs in a sandbox with three walls:

1. DuckDB's own parser must see exactly one SELECT statement (``WITH ... SELECT`` included);
   anything else (writes, ATTACH, COPY, PRAGMA, SET, INSTALL/LOAD, CALL...) is refused unrun.
2. The connection is read-only with external access disabled (no files but the database, no
   network), extension autoloading and autoinstalling off, no spilling to a temp directory, a
   memory limit, and the configuration locked so the query cannot undo any of it.
3. The query runs in a child process forked from a clean forkserver, under rlimits (no file may
   be written, bounded address space and CPU). A timer calls ``con.interrupt()`` shortly before
   the deadline, and the parent kills the child at the deadline: DuckDB cannot interrupt some
   scalar functions (``range(1e9)`` or ``lpad('', 1e9, 'x')`` run for minutes), a process can
   always be killed. Where a child process cannot be started, the query runs in-process behind
   walls 1 and 2 and the interrupt timer.

After the query, the child compares the connection's settings, attached databases and function
count with their state before it; any difference is reported as an error.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

__all__ = ["DEFAULT_TIMEOUT", "SANDBOX_CONFIG", "QueryResult", "run_readonly", "table_columns"]

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 5.0  # seconds per query, generous for the small databases pipelines query
MAX_CELL_CHARS = 10_000  # a longer text cell is cut: results go into prompts and feedback
_MEMORY_LIMIT = "512MB"

SANDBOX_CONFIG: Mapping[str, Any] = MappingProxyType({
    "enable_external_access": False,
    "autoload_known_extensions": False,
    "autoinstall_known_extensions": False,
    "allow_community_extensions": False,
    "allow_unsigned_extensions": False,
    "allow_persistent_secrets": False,
    "memory_limit": _MEMORY_LIMIT,
    "threads": 1,
    "temp_directory": "",  # no spilling: nothing is written next to the database
})
"""Global settings of every sandbox connection. Right after connecting, the session's progress bar
is turned off (a long query would draw one on the user's terminal) and ``lock_configuration`` is
set, so no statement can change any setting afterwards."""


@dataclass(frozen=True)
class QueryResult:
    """The outcome of one query: columns and rows, or an error text."""

    columns: tuple[str, ...] = ()
    rows: tuple[tuple[Any, ...], ...] = ()
    error: str | None = None
    truncated: bool = False
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None

    def as_text(self, max_rows: int = 20) -> str:
        """A compact rendering for prompts: a header line and up to ``max_rows`` rows."""
        if self.error is not None:
            return f"ERROR: {self.error}"
        lines = [" | ".join(self.columns)]
        lines += [" | ".join("NULL" if v is None else str(v) for v in row) for row in self.rows[:max_rows]]
        if len(self.rows) > max_rows or self.truncated:
            lines.append(f"... ({len(self.rows)}{'+' if self.truncated else ''} rows)")
        return "\n".join(lines)


def run_readonly(database: str | Path, sql: str, *, max_rows: int = 1000, timeout: float = DEFAULT_TIMEOUT,
                 isolate: bool = True) -> QueryResult:
    """Runs ``sql`` in the sandbox (see the module docstring).

    Args:
        database: Path of an existing DuckDB database file.
        sql: The query text: one SELECT (or WITH ... SELECT) statement.
        max_rows: At most this many rows are fetched; ``truncated`` says when there were more.
        timeout: Seconds before the query is stopped.
        isolate: Run in a child process (the default); ``False`` runs in this process.

    Returns:
        A QueryResult; ``error`` holds the refusal or DuckDB's message when the query failed,
        ``details["seconds"]`` the wall time.
    """
    sql = (sql or "").strip().rstrip(";").strip()
    if not sql:
        return QueryResult(error="empty query")
    database = os.path.abspath(database)  # the child's working directory is the forkserver's
    started = time.perf_counter()
    result = None
    if isolate:
        result = _run_in_child(database, sql, max_rows, timeout)
    if result is None:
        result = _execute(database, sql, max_rows, timeout)
    return replace(result, details={**result.details, "seconds": round(time.perf_counter() - started, 4)})


def table_columns(database: str | Path) -> dict[str, tuple[str, ...]]:
    """The database's tables and views with their columns, in declaration order.

    Tables outside the ``main`` schema are keyed ``schema.table``. An unreadable database gives
    an empty mapping (the query that needs it reports the real error).
    """
    query = ("select schema_name, table_name, column_name from duckdb_columns() "
             "where database_name = current_database() and not internal "
             "order by schema_name, table_name, column_index")
    result = run_readonly(database, query, max_rows=100_000, isolate=False)
    tables: dict[str, list[str]] = {}
    for schema, table, column in result.rows:
        tables.setdefault(table if schema == "main" else f"{schema}.{table}", []).append(column)
    return {table: tuple(columns) for table, columns in tables.items()}


def _refusal(con: Any, sql: str) -> str | None:
    """Why DuckDB's parser says ``sql`` may not run, or None for a single SELECT."""
    import duckdb

    try:
        statements = con.extract_statements(sql)
    except duckdb.Error as exc:
        return _message(exc)
    if len(statements) != 1:
        return f"{len(statements)} statements; write exactly one read-only SELECT query"
    kind = statements[0].type.name
    if kind != "SELECT":
        return f"{kind} statements are not allowed; write one read-only SELECT query"
    return None


def _message(exc: BaseException, timeout: float | None = None) -> str:
    text = str(exc).strip()
    if timeout is not None and ("INTERRUPT" in text or "Interrupted" in text):
        return f"the query ran longer than {timeout:g} s and was stopped"
    return text.splitlines()[0] if text else type(exc).__name__


def _lock(con: Any) -> None:
    """Turns the progress bar off and locks the configuration, before any query runs."""
    import duckdb

    if not con.execute("select current_setting('lock_configuration')").fetchone()[0]:
        con.execute("SET enable_progress_bar = false")
        con.execute("SET lock_configuration = true")
    elif con.execute("select current_setting('enable_progress_bar')").fetchone()[0]:
        # Another connection of this process already locked the shared database instance; the
        # bar stays, the lock holds.
        logger.debug("progress bar left on: the configuration was locked by another connection")
    if not con.execute("select current_setting('lock_configuration')").fetchone()[0]:
        raise duckdb.InvalidInputException("the configuration could not be locked")


def _state(con: Any) -> tuple[Any, ...]:
    """What a query must not change: settings, attached databases, the function catalog."""
    settings = con.execute("select name, value from duckdb_settings() order by name").fetchall()
    databases = con.execute("select database_name from duckdb_databases() order by 1").fetchall()
    functions = con.execute("select count(*) from duckdb_functions()").fetchone()
    return tuple(settings), tuple(databases), functions


def _cell(value: Any) -> tuple[Any, bool]:
    if isinstance(value, str | bytes) and len(value) > MAX_CELL_CHARS:
        return value[:MAX_CELL_CHARS], True
    return value, False


def _execute(database: str, sql: str, max_rows: int, timeout: float) -> QueryResult:
    """Walls 1 and 2, in this process, with the interrupt timer."""
    import duckdb

    try:
        con = duckdb.connect(database, read_only=True, config=dict(SANDBOX_CONFIG))
    except duckdb.Error as exc:
        return QueryResult(error=f"cannot open database {database}: {_message(exc)}")
    try:
        _lock(con)
    except duckdb.Error as exc:
        con.close()
        return QueryResult(error=f"cannot secure the connection to {database}: {_message(exc)}")
    timer = threading.Timer(max(0.05, timeout - min(0.25, timeout * 0.2)), con.interrupt)
    try:
        refusal = _refusal(con, sql)
        if refusal is not None:
            return QueryResult(error=refusal, details={"refused": True})
        before = _state(con)
        timer.start()
        try:
            cursor = con.execute(sql)
            if cursor.description is None:
                return QueryResult(error="the statement returned no result set; write a SELECT query")
            columns = tuple(d[0] for d in cursor.description)
            fetched = cursor.fetchmany(max_rows + 1)
            result = None
        except duckdb.Error as exc:
            result = QueryResult(error=_message(exc, timeout))
        finally:
            timer.cancel()
        if _state(con) != before:
            return QueryResult(error="the query changed the sandbox's settings or catalog",
                               details={"sandbox_changed": True})
        if result is not None:
            return result
        rows, cut = [], False
        for row in fetched[:max_rows]:
            cells = [_cell(v) for v in row]
            cut = cut or any(c for _, c in cells)
            rows.append(tuple(v for v, _ in cells))
        return QueryResult(columns, tuple(rows), truncated=len(fetched) > max_rows or cut)
    except duckdb.Error as exc:
        return QueryResult(error=_message(exc))
    finally:
        timer.cancel()
        con.close()


def _run_in_child(database: str, sql: str, max_rows: int, timeout: float) -> QueryResult | None:
    """Wall 3; None when no child process can be started here (the caller runs in-process)."""
    from programs.sandbox import SandboxUnavailable, run_sandboxed

    try:
        outcome = run_sandboxed(f"{__name__}:_execute", (database, sql, max_rows, timeout), timeout=timeout,
                                preload=("duckdb", __name__))
    except SandboxUnavailable as exc:
        logger.debug("SQL sandbox process unavailable (%s); running in-process", exc)
        return None
    if outcome.status == "ok":
        return outcome.value
    if outcome.status == "timeout":
        return QueryResult(error=f"the query ran longer than {timeout:g} s and was stopped", details={"timeout": True})
    if outcome.status == "error":
        return QueryResult(error=f"the query failed in the sandbox: {outcome.value}", details={"killed": True})
    return QueryResult(error=f"the query was stopped by the sandbox (exit code {outcome.exit_code}): it exceeded "
                             "a resource limit", details={"killed": True})
