"""Text-to-SQL on the Restaurants database: what each CodeGen setting buys, and its LM calls.

Data: ``../shared/datasets/restaurants`` (``$PIPEC_RESTAURANTS``): 378 questions with gold SQL
over a three-table DuckDB database, each in one of ten folds, every SQL template in one fold.
Folds 0-7 are the trainset (the knn pool; nothing is tuned on 8-9), folds 8-9 the test set: SQL
shapes never seen in training. Questions repeat inside the dataset; each distinct
(question, gold SQL) pair is scored once. Folds 8-9 hold 40 distinct questions but only 4 distinct
gold queries (paraphrases: 23 of one, 11, 4, 2 of the others); the LM rows are scored on at most
``PER_QUERY`` paraphrases of each gold query (11 questions), which weighs the four queries
evenly and fits the embedded model's time on 2 shared cores.

Scoring is execution in the sandbox (``metrics.sql_checks.SqlResultMatch``: the same rows as the
gold query). The README of the dataset warns that 195 of 378 gold queries return no rows, where
an execution match proves little, so two figures are reported: execution accuracy on the
questions whose gold result is non-empty, and on all questions, where an empty gold result
counts only when the query also names the gold query's tables and string literals.

Rows: zero-shot (the whole schema in the prompt), then the CodeGen settings one by one on top of
retrieved demos (``--optimizer knn``, 4 nearest question -> SQL pairs), so each row's gain over
the row above is the setting's. The result file is rewritten after every row.

Run: ``pipec bench restaurants``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import dspy

from benchmarks.harness import markdown_table
from programs import CodeGen, DatasetError, Pipeline

__all__ = ["ROWS", "RestaurantsSQL", "database_path", "dataset_dir", "load_split", "run"]

logger = logging.getLogger(__name__)

TEST_FOLDS = (8, 9)
PER_QUERY = 3  # paraphrases scored per distinct gold query of the test folds
NOT_RUN = "not run"
INSTRUCTIONS = ("Write one DuckDB SQL SELECT query over the given schema that answers the question about "
                "restaurants. Text values in the database are lower case.")

# (row name, settings): knn=True retrieves the 4 nearest trainset question -> SQL pairs as demos.
ROWS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("zero-shot", {}),
    ("zero-shot + schema_linking", {"schema_linking": True}),
    ("zero-shot + grammar", {"grammar": True}),
    ("knn k=4", {"knn": True}),
    ("knn + schema_linking", {"knn": True, "schema_linking": True}),
    ("knn + schema_linking + grammar", {"knn": True, "schema_linking": True, "grammar": True}),
    ("knn + schema_linking + grammar + repair", {"knn": True, "schema_linking": True, "grammar": True,
                                                 "repair": True}),
    ("knn + schema_linking + grammar + samples=3", {"knn": True, "schema_linking": True, "grammar": True,
                                                   "samples": 3}),
    # self-consistency without the grammar (whose calls cost several times the CPU): its gain is over
    # "knn + schema_linking", the row with the same settings and one sample
    ("knn + schema_linking + samples=3", {"knn": True, "schema_linking": True, "samples": 3}),
)
NODE_SETTINGS = ("schema_linking", "grammar", "repair", "samples")


def dataset_dir() -> Path:
    """``$PIPEC_RESTAURANTS``, else ``../shared/datasets/restaurants`` beside the checkout."""
    override = os.environ.get("PIPEC_RESTAURANTS")
    path = Path(override) if override else Path(__file__).resolve().parents[2] / "shared" / "datasets" / "restaurants"
    if not (path / "questions.jsonl").is_file():
        raise DatasetError(f"Restaurants not found at {path}: set PIPEC_RESTAURANTS to the folder holding "
                           "questions.jsonl")
    return path


def _opens(path: Path) -> bool:
    import duckdb

    try:
        con = duckdb.connect(str(path), read_only=True)
    except duckdb.Error:
        return False
    try:
        return con.execute("select count(*) from RESTAURANT").fetchone()[0] > 0
    except duckdb.Error:
        return False
    finally:
        con.close()


def database_path() -> Path:
    """The DuckDB database: the dataset's file when this DuckDB opens it, else one rebuilt from
    ``restaurants.sqlite`` into ``$PIPEC_HOME`` (``RESTAURANT_ID`` renamed ``ID``, as the README says)."""
    import sqlite3

    import duckdb

    root = dataset_dir()
    shipped = root / "restaurants.duckdb"
    if shipped.is_file() and _opens(shipped):
        return shipped
    source = root / "restaurants.sqlite"
    digest = hashlib.sha256(source.read_bytes()).hexdigest()[:12]
    home = Path(os.environ.get("PIPEC_HOME") or Path.home() / ".cache" / "pipec")
    target = home / f"restaurants-{digest}-duckdb{duckdb.__version__}.duckdb"
    if target.exists():
        return target
    home.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=home) as tmp:
        built = Path(tmp) / target.name
        lite = sqlite3.connect(str(source))
        con = duckdb.connect(str(built))
        try:
            for (table,) in lite.execute("select name from sqlite_master where type = 'table'").fetchall():
                columns = lite.execute(f'pragma table_info("{table}")').fetchall()
                names = ["ID" if (table, c[1]) == ("RESTAURANT", "RESTAURANT_ID") else c[1] for c in columns]
                kinds = [_duck_type(c[2]) for c in columns]
                con.execute(f'create table "{table}" (' + ", ".join(f'"{n}" {k}' for n, k in zip(names, kinds,
                                                                                                  strict=True)) + ")")
                rows = lite.execute(f'select * from "{table}"').fetchall()
                if rows:
                    con.executemany(f'insert into "{table}" values ({", ".join("?" for _ in names)})', rows)
        finally:
            con.close()
            lite.close()
        os.replace(built, target)
    return target


def _duck_type(sqlite_type: str) -> str:
    kind = sqlite_type.lower()
    if "int" in kind:
        return "INTEGER"
    if "decimal" in kind or "real" in kind or "float" in kind or "double" in kind:
        return "DOUBLE"
    return "VARCHAR"


class RestaurantsSQL(Pipeline):
    """One CodeGen node: a question about restaurants -> a DuckDB query.

    Args:
        database: The DuckDB file (``database_path()`` by default).
        **settings: CodeGen settings (``schema_linking``, ``grammar``, ``repair``, ``samples``).
    """

    inputs = ("question",)
    gold = {"generate": "sql"}

    def __init__(self, database: str | os.PathLike | None = None, **settings: Any) -> None:
        super().__init__()
        from programs.sql_linking import database_schema, schema_text

        self.database = str(database or database_path())
        self.schema = schema_text(database_schema(self.database))
        self.generate = CodeGen({"question": "a question about restaurants", "db_schema": "the tables and columns"},
                                output="sql", database=self.database, instructions=INSTRUCTIONS, **settings)

    def forward(self, question: str) -> dspy.Prediction:
        return dspy.Prediction(sql=self.generate(question=question, db_schema=self.schema).sql)


def load_split(per_query: int | None = None) -> tuple[list[dspy.Example], list[dspy.Example]]:
    """(train, test): folds 0-7 and 8-9, each distinct (question, sql) pair once, in file order;
    with ``per_query``, at most that many test questions per distinct gold query (the first ones)."""
    train, test, seen = [], [], set()
    per_gold: dict[str, int] = {}
    for line in (dataset_dir() / "questions.jsonl").read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        key = (row["question"], row["sql"])
        if key in seen:
            continue
        seen.add(key)
        example = dspy.Example(question=row["question"], sql=row["sql"]).with_inputs("question")
        if int(row["fold"]) not in TEST_FOLDS:
            train.append(example)
        elif per_query is None or per_gold.get(row["sql"], 0) < per_query:
            per_gold[row["sql"]] = per_gold.get(row["sql"], 0) + 1
            test.append(example)
    return train, test


def _structure(sql: str) -> tuple[frozenset[str], frozenset[str]] | None:
    """The tables and the string literals a query names (lower case), or None when it does not parse."""
    import sqlglot
    from sqlglot import exp
    from sqlglot.errors import ParseError, TokenError

    try:
        tree = sqlglot.parse_one(sql, read="duckdb")
    except (ParseError, TokenError):
        return None
    if tree is None:
        return None
    tables = frozenset(t.name.lower() for t in tree.find_all(exp.Table))
    literals = frozenset(str(v.this).lower() for v in tree.find_all(exp.Literal) if v.is_string)
    return tables, literals


def _score(program: RestaurantsSQL, examples: Sequence[dspy.Example]) -> dict[str, Any]:
    from experiments.evaluate import lm_usage
    from metrics.sql_checks import SqlResultMatch
    from programs.sqlexec import run_readonly

    check = SqlResultMatch()
    node = program.generate
    outcomes = []
    start = time.perf_counter()
    with lm_usage() as usage:
        for example in examples:
            try:
                sql = program(question=example.question).sql
            except Exception as exc:  # a call that failed (unparseable answer) scores 0
                logger.warning("restaurants: %s on %r", exc, example.question)
                sql = None
            verdict = check(sql, gold=example.sql, node=node)
            gold = run_readonly(program.database, example.sql, max_rows=1000)
            nonempty = bool(gold.ok and gold.rows)
            passed = bool(verdict.passed)
            if passed and not nonempty:
                passed = sql is not None and _structure(sql) == _structure(example.sql)
            runs = sql is not None and run_readonly(program.database, sql, max_rows=1).ok
            outcomes.append({"question": example.question, "sql": sql, "match": bool(verdict.passed),
                             "passed": passed, "nonempty_gold": nonempty, "runs": runs})
    n = len(outcomes)
    nonempty = [o for o in outcomes if o["nonempty_gold"]]
    return {"n": n, "n_nonempty": len(nonempty),
            "accuracy_nonempty": sum(o["match"] for o in nonempty) / len(nonempty) if nonempty else 0.0,
            "accuracy_all": sum(o["passed"] for o in outcomes) / n, "runs": sum(o["runs"] for o in outcomes) / n,
            "lm_calls_per_question": usage.calls / n, "prompt_tokens_per_question": usage.prompt_tokens / n,
            "seconds": time.perf_counter() - start, "outcomes": outcomes}


def _program(settings: dict[str, Any], train: Sequence[dspy.Example], database: str) -> RestaurantsSQL:
    node_settings = {k: v for k, v in settings.items() if k in NODE_SETTINGS}
    program = RestaurantsSQL(database, **node_settings)
    if settings.get("knn"):
        from optimizers.knn import RetrievalFewShot

        program = RetrievalFewShot(k=4, embedding="hash", order="nearest_last", balance=False,
                                   max_lm_calls=0).compile(program, trainset=list(train))
    return program


def _table(rows: list[dict[str, Any]]) -> str:
    def cells(r: dict[str, Any]) -> list[Any]:
        if r["status"] == NOT_RUN:
            return [r["row"], NOT_RUN, NOT_RUN, NOT_RUN, NOT_RUN, NOT_RUN, NOT_RUN]
        return [r["row"], f"{r['n']} ({r['n_nonempty']})", r["accuracy_nonempty"], r["accuracy_all"], r["runs"],
                r["lm_calls_per_question"], r["prompt_tokens_per_question"]]

    return markdown_table(["program", "questions (non-empty gold)", "exec. accuracy, non-empty gold",
                           "exec. accuracy, all", "query runs", "LM calls / question", "prompt tokens / question"],
                          [cells(r) for r in rows])


def _previous(path: Path | None) -> dict[str, dict[str, Any]]:
    """Measured rows of an earlier result file, by name (to keep them beside the rows run now)."""
    if path is None or not path.is_file():
        return {}
    try:
        rows = json.loads(path.read_text(encoding="utf-8")).get("rows", [])
    except (OSError, ValueError):
        return {}
    return {r["row"]: r for r in rows if r.get("status") == "measured"}


def run(rows: Sequence[str] | None = None, checkpoint: Callable[[dict[str, Any]], None] | None = None,
        keep: str | os.PathLike | None = None, per_query: int | None = PER_QUERY) -> dict[str, Any]:
    """Measures the rows (all of ``ROWS`` by default; the others say "not run").

    Args:
        rows: The rows to run, by name.
        checkpoint: Called with the result so far after every row (to write it).
        keep: An earlier result file whose measured rows are kept (each carries the date and the
            commit it was measured at) unless run again now.
        per_query: Test questions per distinct gold query (None: all 40).
    """
    from experiments.lm import make_lm
    from experiments.tracking import code_version

    database = str(database_path())
    train, test = load_split(per_query)
    all_test = len(load_split()[1])
    from programs.sqlexec import run_readonly

    # Computed here, not read from a row: a row kept from an earlier run may have counted otherwise.
    nonempty_gold = sum(bool(g.ok and g.rows) for g in (run_readonly(database, e.sql, max_rows=1000) for e in test))
    wanted = [name for name, _ in ROWS] if rows is None else list(rows)
    config = None
    kept = _previous(Path(keep) if keep else None)
    measured: dict[str, dict[str, Any]] = {}
    started = time.perf_counter()

    def result() -> dict[str, Any]:
        all_rows = [measured.get(n) or kept.get(n) or {"row": n, "settings": s, "status": NOT_RUN} for n, s in ROWS]
        return {"rows": all_rows, "table": _table(all_rows), "total_s": time.perf_counter() - started,
                "settings": {
                    "dataset": "Restaurants (jkkummerfeld/text2sql-data), distinct (question, sql) pairs",
                    "database": database, "train_folds": "0-7", "test_folds": list(TEST_FOLDS),
                    "train": len(train), "test": len(test), "test_distinct_in_folds": all_test,
                    "per_query": per_query,
                    "test_nonempty_gold": nonempty_gold,
                    "knn": "RetrievalFewShot(k=4, embedding=hash, order=nearest_last), pool = folds 0-7, no tuning",
                    "lm": "local (SmolLM2-135M-Instruct, llama.cpp, JSON-schema constrained decoding), "
                          "temperature 0 (samples: 0.7 after the first), no cache, 1 llama.cpp thread",
                    "scoring": "SqlResultMatch in the sandbox; 'all' counts an empty gold result only with the "
                               "gold query's tables and string literals",
                }}

    for name, settings in ROWS:
        if name not in wanted:
            continue
        logger.info("restaurants: %s after %.0f s", name, time.perf_counter() - started)
        if config is None:
            config = make_lm("local", cache=False)
        program = _program(settings, train, database)
        with dspy.context(lm=config.lm, adapter=config.adapter):
            figures = _score(program, test)
        measured[name] = {"row": name, "settings": settings, "status": "measured", **figures,
                          "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                          **code_version(Path(__file__).resolve().parent)}
        logger.info("restaurants: %s non-empty %.3f all %.3f calls %.2f (%.0f s)", name, figures["accuracy_nonempty"],
                    figures["accuracy_all"], figures["lm_calls_per_question"], figures["seconds"])
        if checkpoint is not None:
            checkpoint(result())
    return result()


if __name__ == "__main__":
    from benchmarks import main

    main("restaurants")
