"""Checks for code-generator (SQL) nodes: static analysis with sqlglot, then sandboxed execution
compared with the gold query's result.

The static pass finds what can be said without running anything: a parse error, more than one
statement, a statement that is not a read-only SELECT, a file or network read, a table or column
that is not in the database (with "did you mean" suggestions). Refusals (writes, ATTACH, COPY,
PRAGMA, SET, INSTALL/LOAD, file reads, several statements) score 0 without running. Unknown names
and parse errors only explain: sqlglot does not know every DuckDB construct, so the query still
runs, and the explanation joins DuckDB's error when it fails. Execution is
``programs.sqlexec.run_readonly``, the sandbox the pipelines use too.

Example:
    >>> analyze_sql("select totl from orders", {"orders": ("id", "total")}).problems
    ['column `totl` does not exist; table `orders` has id, total. Did you mean `total`?']
"""

from __future__ import annotations

import difflib
import re
import threading
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from metrics.verdict import Verdict
from programs.nodes import Node
from programs.sqlexec import DEFAULT_TIMEOUT, QueryResult, run_readonly, table_columns

__all__ = ["SqlAnalysis", "SqlResultMatch", "analyze_sql"]

Schema = Mapping[str, Sequence[str]]

# Statement kinds (sqlglot expression class names) that are not a read-only query.
_NOT_A_QUERY = frozenset({
    "Alter", "AlterTable", "Analyze", "Attach", "Command", "Commit", "Copy", "Create", "Delete", "Describe",
    "Detach", "Drop", "Export", "Insert", "Install", "Load", "Merge", "Pragma", "Rollback", "Set", "Show",
    "Summarize", "Transaction", "TruncateTable", "Update", "Use",
})
# Table functions that read files or other databases, or run SQL text the checks cannot see.
_EXTERNAL_FUNCTIONS = frozenset({
    "read_csv", "read_csv_auto", "read_parquet", "parquet_scan", "parquet_metadata", "parquet_schema",
    "read_json", "read_json_auto", "read_json_objects", "read_ndjson", "read_ndjson_auto",
    "read_ndjson_objects", "read_text", "read_blob", "glob", "sniff_csv", "read_xlsx", "st_read",
    "iceberg_scan", "delta_scan", "sqlite_scan", "sqlite_attach", "postgres_scan", "postgres_attach",
    "mysql_scan", "query", "query_table", "read_file", "parquet_file_metadata",
})
# How a statement class reads in SQL, where its name is not the keyword.
_KEYWORDS = {"AlterTable": "ALTER", "TruncateTable": "TRUNCATE", "Transaction": "BEGIN TRANSACTION"}
_FILE_LIKE = re.compile(r"[/\\]|\.(csv|tsv|parquet|json|jsonl|ndjson|txt|db|duckdb|sqlite|xlsx?)$", re.I)


@dataclass(frozen=True)
class SqlAnalysis:
    """What the static pass found.

    Attributes:
        refusal: Why the query must not run at all, or None.
        problems: Explanations of likely errors (unknown tables/columns, a parse error).
        ordered: The outermost query has an ORDER BY.
    """

    refusal: str | None = None
    problems: tuple[str, ...] = ()
    ordered: bool = False


def _suggest(name: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(name.lower(), [c.lower() for c in choices], n=1, cutoff=0.6)
    if not close:
        return ""
    original = next(c for c in choices if c.lower() == close[0])
    return f" Did you mean `{original}`?"


def _function_name(node: Any) -> str:
    from sqlglot import exp

    return (node.name if isinstance(node, exp.Anonymous) else node.sql_name()).lower()


def _refusal(statement: Any) -> str | None:
    from sqlglot import exp

    for node in statement.walk():
        kind = type(node).__name__
        if kind in _NOT_A_QUERY:
            word = str(node.this).upper() if kind == "Command" else _KEYWORDS.get(kind, kind.upper())
            return f"{word} statements are not allowed; write one read-only SELECT query"
        if isinstance(node, exp.Func) and _function_name(node) in _EXTERNAL_FUNCTIONS:
            return (f"{_function_name(node)}() reads outside the database; query only the database's tables")
        if isinstance(node, exp.Table) and isinstance(node.this, exp.Identifier) and _FILE_LIKE.search(node.name):
            return f"FROM '{node.name}' reads a file; query only the database's tables"
    if not isinstance(statement, exp.Query):
        return f"`{statement.sql()[:40]}` is not a query; write one read-only SELECT query"
    return None


def _table_key(table: Any, schema: Schema) -> str | None:
    """The schema key of a table reference, or None when it is not a plain named table."""
    from sqlglot import exp

    if not isinstance(table.this, exp.Identifier):
        return None  # a table function such as range(3)
    name = table.name
    if table.db and table.db.lower() != "main":
        name = f"{table.db}.{name}"
    lowered = {key.lower(): key for key in schema}
    return lowered.get(name.lower(), name)


def _unknown_tables(statement: Any, schema: Schema) -> list[str]:
    from sqlglot import exp

    ctes = {cte.alias_or_name.lower() for cte in statement.find_all(exp.CTE)}
    problems = []
    for table in statement.find_all(exp.Table):
        key = _table_key(table, schema)
        if key is None or key in schema or key.lower() in ctes:
            continue
        problems.append(f"table `{key}` does not exist.{_suggest(key, list(schema))} "
                        f"The tables are {', '.join(schema) or 'none'}.")
    return list(dict.fromkeys(problems))


def _alias_columns(expression: Any) -> list[str]:
    """The column list of a CTE or derived table alias (``WITH t(n) AS ...``), if it has one."""
    from sqlglot import exp

    while isinstance(expression.parent, exp.SetOperation):  # a recursive CTE's parts share its alias
        expression = expression.parent
    alias = expression.parent.args.get("alias") if expression.parent is not None else None
    return [column.name for column in getattr(alias, "columns", None) or []]


def _visible(scope: Any, schema: Schema) -> tuple[dict[str, tuple[str, Sequence[str]]], bool]:
    """Per alias, (what it is, its columns) for every source a scope and its parents can see;
    and whether some source's columns are unknown (a table function, a ``*`` subquery)."""
    from sqlglot import exp

    sources: dict[str, tuple[str, Sequence[str]]] = {}
    opaque = False
    while scope is not None:
        for alias, source in scope.sources.items():
            if alias in sources:
                continue
            if isinstance(source, exp.Table):
                key = _table_key(source, schema)
                if key in schema:
                    sources[alias] = (f"table `{key}`", schema[key])
                else:
                    opaque = True
            else:
                selects = _alias_columns(source.expression) or getattr(source.expression, "named_selects", [])
                if "*" in selects or "" in selects:
                    opaque = True
                else:
                    sources[alias] = (f"`{alias}`", selects)
        scope = scope.parent
    return sources, opaque


def _unknown_columns(statement: Any, schema: Schema) -> list[str]:
    from sqlglot import exp
    from sqlglot.optimizer.scope import traverse_scope

    problems = []
    for scope in traverse_scope(statement):
        sources, opaque = _visible(scope, schema)
        # DuckDB lets WHERE, GROUP BY and ORDER BY name a select alias.
        aliases = {e.alias.lower() for e in scope.expression.expressions if isinstance(e, exp.Alias)}
        for column in scope.columns:
            name = column.name
            if column.table:
                if column.table not in sources:
                    continue
                what, columns = sources[column.table]
                if name.lower() not in {c.lower() for c in columns}:
                    problems.append(f"column `{column.table}.{name}` does not exist; {what} has "
                                    f"{', '.join(columns)}.{_suggest(name, columns)}")
                continue
            if opaque or name.lower() in aliases:
                continue
            known = {c.lower() for _, columns in sources.values() for c in columns}
            if sources and name.lower() not in known:
                where = "; ".join(f"{what} has {', '.join(columns)}" for what, columns in sources.values())
                every = [c for _, columns in sources.values() for c in columns]
                problems.append(f"column `{name}` does not exist; {where}.{_suggest(name, every)}")
    return list(dict.fromkeys(problems))


def _parse_error(exc: Exception) -> str:
    errors = getattr(exc, "errors", None) or [{}]
    first = errors[0]
    description = first.get("description") or str(exc).splitlines()[0]
    description = re.sub(r"<class '[\w.]*\.(\w+)'>", lambda m: m.group(1).upper(), description)
    where = f" (line {first['line']}, column {first['col']})" if first.get("line") else ""
    return f"the SQL does not parse{where}: {description}."


def _ordered(sql: str) -> bool:
    """Whether the outermost query orders its result (a text search when sqlglot cannot parse)."""
    import sqlglot
    from sqlglot.errors import ParseError, TokenError

    try:
        statement = sqlglot.parse_one(sql, read="duckdb")
    except (ParseError, TokenError):
        return bool(re.search(r"order\s+by", sql, re.I))
    return bool(statement is not None and statement.args.get("order"))


def analyze_sql(sql: str, schema: Schema) -> SqlAnalysis:
    """The static pass over ``sql`` against ``schema`` (``{table: columns}``); nothing runs."""
    import sqlglot
    from sqlglot.errors import ParseError, TokenError

    try:
        statements = [s for s in sqlglot.parse(sql, read="duckdb") if s is not None]
    except (ParseError, TokenError) as exc:
        return SqlAnalysis(problems=(_parse_error(exc),), ordered=bool(re.search(r"order\s+by", sql, re.I)))
    if not statements:
        return SqlAnalysis(refusal="the SQL is empty; write one SELECT query")
    if len(statements) > 1:
        return SqlAnalysis(refusal=f"{len(statements)} statements; write exactly one read-only SELECT query")
    statement = statements[0]
    refusal = _refusal(statement)
    if refusal is not None:
        return SqlAnalysis(refusal=refusal)
    problems = _unknown_tables(statement, schema)
    if schema:
        try:
            problems += _unknown_columns(statement, schema)
        except Exception:  # scope analysis is an explanation, never a reason to fail the check
            pass
    return SqlAnalysis(problems=tuple(problems), ordered=bool(statement.args.get("order")))


def _normalise(value: Any) -> Any:
    if isinstance(value, Decimal | float):
        return round(float(value), 6)
    return value


def _rows(result: QueryResult) -> list[tuple]:
    return [tuple(_normalise(v) for v in row) for row in result.rows]


def _column_difference(got: Sequence[str], expected: Sequence[str]) -> str:
    lowered = {c.lower() for c in got}
    missing = [c for c in expected if c.lower() not in lowered]
    extra = [c for c in got if c.lower() not in {e.lower() for e in expected}]
    parts = [f"the result has {len(got)} column(s) ({', '.join(got)}), expected {len(expected)} "
             f"({', '.join(expected)})."]
    if missing and len(missing) < len(expected):
        parts.append(f"missing columns: {', '.join(missing)}.")
    if extra and len(extra) < len(got):
        parts.append(f"extra columns: {', '.join(extra)}.")
    return " ".join(parts)


def _row_difference(got: QueryResult, expected: QueryResult, ordered: bool) -> str | None:
    got_rows, expected_rows = _rows(got), _rows(expected)
    same = got_rows == expected_rows if ordered else Counter(got_rows) == Counter(expected_rows)
    if same:
        return None
    missing = list((Counter(expected_rows) - Counter(got_rows)).elements())[:3]
    extra = list((Counter(got_rows) - Counter(expected_rows)).elements())[:3]
    parts = [f"the result has {len(got_rows)} row(s), expected {len(expected_rows)}."]
    if missing:
        parts.append(f"missing rows: {missing}.")
    if extra:
        parts.append(f"unexpected rows: {extra}.")
    if not missing and not extra:
        parts.append("the rows are right but in the wrong order.")
    return " ".join(parts)


@dataclass(frozen=True)
class SqlResultMatch:
    """CodeGen check: the SQL passes the static pass, runs in the sandbox, and returns the gold
    query's result: the same rows, as a multiset unless the gold query orders its result. Column
    names are compared only when the column counts differ (aliases are free).

    Args:
        max_rows: Rows fetched per query.
        timeout: Seconds per query before it is stopped.
    """

    max_rows: int = 1000
    timeout: float = DEFAULT_TIMEOUT
    _cache: dict = field(default_factory=dict, compare=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, compare=False, repr=False)

    def __deepcopy__(self, memo: dict) -> SqlResultMatch:
        # A lock cannot be copied; a copy (an optimizer copying its metric) starts a fresh cache.
        return SqlResultMatch(self.max_rows, self.timeout)

    def _memo(self, key: tuple, compute: Any) -> Any:
        with self._lock:
            if key in self._cache:
                return self._cache[key]
        value = compute()
        with self._lock:
            self._cache[key] = value
        return value

    @staticmethod
    def _stamp(database: str) -> int:
        path = Path(database)
        return path.stat().st_mtime_ns if path.exists() else 0

    def __call__(self, output: Any, *, gold: Any = None, node: Node | None = None, **_: Any) -> Verdict:
        database = getattr(node, "database", None)
        if not database:
            return Verdict.fail("no database is configured for this code-generator node.")
        sql = "" if output is None else str(output)
        stamp = self._stamp(database)
        schema = self._memo(("schema", database, stamp), lambda: table_columns(database))
        analysis = analyze_sql(sql, schema)
        if analysis.refusal is not None:
            return Verdict.fail(f"the SQL was refused: {analysis.refusal}.", refused=True)
        got = run_readonly(database, sql, max_rows=self.max_rows, timeout=self.timeout)
        if not got.ok:
            error = got.error if got.error.endswith((".", "!", "?")) else f"{got.error}."
            explained = "".join(f" {p}" for p in analysis.problems)
            return Verdict.fail(f"the SQL failed: {error}{explained}", error=got.error,
                                problems=list(analysis.problems))
        if gold is None:
            return Verdict.ok(rows=len(got.rows))
        expected = self._memo(("gold", database, stamp, str(gold)), lambda: run_readonly(
            database, str(gold), max_rows=self.max_rows, timeout=self.timeout))
        if not expected.ok:
            return Verdict.fail(f"the gold SQL failed ({expected.error}); fix the dataset.", gold_error=expected.error)
        if len(got.columns) != len(expected.columns):
            return Verdict.fail(_column_difference(got.columns, expected.columns),
                                got_columns=list(got.columns), expected_columns=list(expected.columns))
        difference = _row_difference(got, expected, _ordered(str(gold)))
        if difference is None:
            return Verdict.ok(rows=len(got.rows))
        return Verdict.fail(difference, expected_rows=len(expected.rows), got_rows=len(got.rows))
