"""Schema linking for SQL nodes: the part of a database schema a question needs, with hints.

A small model writes better SQL from a short schema that names what the question is about. For
each question, ``link_schema`` keeps:

- the tables the question touches: a table whose name or column names share a word with the
  question, or that holds one of the question's values;
- **value hints**: word spans of the question (up to five words) that equal a stored value of a
  text column (``'bay area' is a value of GEOGRAPHIC.REGION``), longest spans first;
- **join hints**: ``A.X_ID = X.ID`` for the kept tables, found from the column names;
- all columns of the kept tables while the schema stays under ``max_columns``; past that only
  the linked and key columns.

A question that links to nothing keeps the whole schema. The database's columns and values are
read once per file version (read-only, in the sandbox's connection settings).

Example:
    >>> schema = {"CITY": [("NAME", "VARCHAR"), ("REGION", "VARCHAR")],
    ...           "SHOP": [("ID", "INTEGER"), ("CITY_NAME", "VARCHAR")]}
    >>> linked = link_schema("shops in the bay area", schema, {"bay area": (("CITY", "REGION"),)})
    >>> linked.hints
    (("bay area", (("CITY", "REGION"),)),)
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["LinkedSchema", "database_schema", "database_values", "link_schema", "linked_schema_text",
           "schema_text", "text_is_lowercase"]

Schema = Mapping[str, Sequence[tuple[str, str]]]
Values = Mapping[str, Sequence[tuple[str, str]]]

MAX_VALUES_PER_COLUMN = 50_000  # a text column with more distinct values gives no hints (ids, free text)
MAX_SPAN_WORDS = 5
_WORD = re.compile(r"[^\W_]+")
_STOP = frozenset(
    "a an and are as at be by can do does for from give how i in is it me of on or show some that the there "
    "to we what where which who with you".split())


@dataclass(frozen=True)
class LinkedSchema:
    """The schema one question needs.

    Attributes:
        tables: ``{table: ((column, type), ...)}`` kept, in the database's order.
        hints: ``(span, ((table, column), ...))`` for question spans that are stored values.
        joins: ``"A.X = B.Y"`` join conditions between kept tables, from the column names.
    """

    tables: Mapping[str, tuple[tuple[str, str], ...]]
    hints: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = ()
    joins: tuple[str, ...] = ()


def _words(text: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(text)]


def _stem(word: str) -> str:
    for suffix in ("ies", "es", "s"):
        if word.endswith(suffix) and len(word) > len(suffix) + 2:
            return word[: -len(suffix)] + ("y" if suffix == "ies" else "")
    return word


def _table_stamp(database: str | Path) -> tuple[str, int]:
    path = Path(database).resolve()
    return str(path), path.stat().st_mtime_ns if path.exists() else 0


def database_schema(database: str | Path) -> dict[str, tuple[tuple[str, str], ...]]:
    """``{table: ((column, type), ...)}`` of a DuckDB file, read once per file version."""
    return dict(_schema(*_table_stamp(database)))


@functools.lru_cache(maxsize=8)
def _schema(path: str, _stamp: int) -> tuple[tuple[str, tuple[tuple[str, str], ...]], ...]:
    from programs.sqlexec import run_readonly

    result = run_readonly(path, "select schema_name, table_name, column_name, data_type from duckdb_columns() "
                                "where database_name = current_database() and not internal "
                                "order by schema_name, table_name, column_index", max_rows=100_000, isolate=False)
    tables: dict[str, list[tuple[str, str]]] = {}
    for schema, table, column, kind in result.rows:
        tables.setdefault(table if schema == "main" else f"{schema}.{table}", []).append((column, kind))
    return tuple((t, tuple(cols)) for t, cols in tables.items())


def database_values(database: str | Path) -> dict[str, tuple[tuple[str, str], ...]]:
    """``{lower-cased value: ((table, column), ...)}`` for the text columns of a DuckDB file."""
    return _values(*_table_stamp(database))


@functools.lru_cache(maxsize=8)
def _values(path: str, stamp: int) -> dict[str, tuple[tuple[str, str], ...]]:
    from programs.sqlexec import run_readonly

    index: dict[str, list[tuple[str, str]]] = {}
    for table, columns in _schema(path, stamp):
        for column, kind in columns:
            if not kind.upper().startswith(("VARCHAR", "TEXT", "STRING")):
                continue
            quoted_table = ".".join(f'"{part}"' for part in table.split("."))
            result = run_readonly(path, f'select distinct lower(trim("{column}")) from {quoted_table} '
                                        f'where "{column}" is not null', max_rows=MAX_VALUES_PER_COLUMN,
                                  isolate=False)
            if not result.ok or result.truncated:
                continue
            for (value,) in result.rows:
                if value and len(value) <= 80:
                    index.setdefault(value, []).append((table, column))
    return {value: tuple(where) for value, where in index.items()}


def text_is_lowercase(database: str | Path) -> bool:
    """Whether every stored text value of the database is lower case (its value index is exact)."""
    return _lowercase(*_table_stamp(database))


@functools.lru_cache(maxsize=8)
def _lowercase(path: str, stamp: int) -> bool:
    from programs.sqlexec import run_readonly

    checks = []
    for table, columns in _schema(path, stamp):
        quoted_table = ".".join(f'"{part}"' for part in table.split("."))
        checks += [f'select 1 from {quoted_table} where "{c}" <> lower("{c}")' for c, kind in columns
                   if kind.upper().startswith(("VARCHAR", "TEXT", "STRING"))]
    if not checks:
        return False
    result = run_readonly(path, "select count(*) from (" + " union all ".join(checks) + ")", isolate=False)
    return result.ok and result.rows[0][0] == 0


def _value_hints(words: list[str], values: Values) -> list[tuple[str, tuple[tuple[str, str], ...]]]:
    """Longest-first, non-overlapping question spans that are stored values."""
    taken = [False] * len(words)
    hints = []
    for size in range(min(MAX_SPAN_WORDS, len(words)), 0, -1):
        for start in range(len(words) - size + 1):
            if any(taken[start:start + size]):
                continue
            span = " ".join(words[start:start + size])
            if size == 1 and (span in _STOP or len(span) < 3):
                continue
            where = values.get(span)
            if where:
                hints.append((span, tuple(where)))
                taken[start:start + size] = [True] * size
    return hints


def _joins(tables: Schema) -> list[str]:
    """``A.X_ID = X.ID`` and ``A.ID = B.A_ID`` conditions between the given tables."""
    names = {t.split(".")[-1].upper(): t for t in tables}
    joins = []
    for table, columns in tables.items():
        for column, _ in columns:
            upper = column.upper()
            if upper.endswith("_ID") and upper[:-3] in names and names[upper[:-3]] != table:
                target = names[upper[:-3]]
                key = next((c for c, _ in tables[target] if c.upper() in ("ID", upper)), None)
                if key:
                    joins.append(f"{table}.{column} = {target}.{key}")
    return joins


def link_schema(question: str, schema: Schema, values: Values | None = None, *,
                max_columns: int = 40) -> LinkedSchema:
    """The tables, columns and hints ``question`` needs (see the module docstring)."""
    words = _words(question)
    stems = {_stem(w) for w in words if w not in _STOP}
    hints = _value_hints(words, values or {})
    hinted = {(t, c) for _, where in hints for t, c in where}
    linked_columns = set(hinted)
    kept = []
    for table, columns in schema.items():
        table_words = {_stem(w) for w in _words(table.replace("_", " "))}
        hit = bool(table_words & stems)
        for column, _ in columns:
            if {_stem(w) for w in _words(column.replace("_", " "))} & stems - {"name", "id"}:
                linked_columns.add((table, column))
                hit = True
        if hit or any(t == table for t, _ in hinted):
            kept.append(table)
    if not kept:
        kept = list(schema)
    tables = {t: tuple(schema[t]) for t in schema if t in kept}
    if sum(len(cols) for cols in tables.values()) > max_columns:
        keys = {(t, c) for t, cols in tables.items() for c, _ in cols if c.upper() == "ID" or c.upper().endswith("_ID")}
        tables = {t: tuple((c, k) for c, k in cols if (t, c) in linked_columns | keys) or cols[:1]
                  for t, cols in tables.items()}
    hints = [(span, tuple((t, c) for t, c in where if t in tables)) for span, where in hints]
    return LinkedSchema(tables, tuple((s, w) for s, w in hints if w), tuple(_joins(tables)))


def schema_text(tables: Schema) -> str:
    """One line per table: ``TABLE(column TYPE, ...)``."""
    return "\n".join(f"{t}({', '.join(f'{c} {k}' for c, k in cols)})" for t, cols in tables.items())


def linked_schema_text(linked: LinkedSchema) -> str:
    """The linked schema for a prompt: the tables, then join and value hints."""
    lines = [schema_text(linked.tables)]
    if linked.joins:
        lines.append("Joins: " + "; ".join(linked.joins))
    for span, where in linked.hints:
        lines.append(f"'{span}' is a value of " + ", ".join(f"{t}.{c}" for t, c in where))
    return "\n".join(lines)
