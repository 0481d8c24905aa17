"""Read-only execution of generated SQL against a DuckDB database file.

Used by SQL pipelines at run time (to feed a query's result to the next node) and by the
code-generator validators. Errors are data here, not exceptions: a failed query is an answer
the next step can read and a validator can turn into feedback.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["QueryResult", "run_readonly"]


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


def run_readonly(database: str | Path, sql: str, *, max_rows: int = 1000) -> QueryResult:
    """Runs ``sql`` on a read-only connection with external access disabled.

    Args:
        database: Path of an existing DuckDB database file.
        sql: The query text.
        max_rows: At most this many rows are fetched; ``truncated`` says when there were more.

    Returns:
        A QueryResult; ``error`` holds DuckDB's message when the query failed.
    """
    import duckdb

    sql = (sql or "").strip().rstrip(";").strip()
    if not sql:
        return QueryResult(error="empty query")
    try:
        con = duckdb.connect(str(database), read_only=True, config={"enable_external_access": False})
    except duckdb.Error as exc:
        return QueryResult(error=f"cannot open database {database}: {exc}")
    try:
        cursor = con.execute(sql)
        if cursor.description is None:
            return QueryResult(error="the statement returned no result set; write a SELECT query")
        columns = tuple(d[0] for d in cursor.description)
        rows = cursor.fetchmany(max_rows + 1)
        truncated = len(rows) > max_rows
        return QueryResult(columns, tuple(tuple(r) for r in rows[:max_rows]), truncated=truncated)
    except duckdb.Error as exc:
        return QueryResult(error=str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    finally:
        con.close()
