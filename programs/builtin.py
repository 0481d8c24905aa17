"""The built-in pipelines and their bundled example datasets.

- ``triage``: support message -> category (classifier) -> reply (writer).
- ``sql``: question about the demo shop database -> SQL (codegen) -> one-sentence answer (writer).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import dspy

from programs import sql_demo
from programs.errors import PipelineError
from programs.nodes import Classifier, CodeGen, Writer
from programs.pipeline import Pipeline
from programs.sqlexec import run_readonly

__all__ = ["BUILTINS", "TRIAGE_LABELS", "SqlQA", "Triage", "builtin_dataset", "demo_database"]

DATA_DIR = Path(__file__).parent / "data"
TRIAGE_LABELS = ("billing", "shipping", "account", "technical", "refund")


class Triage(Pipeline):
    """Support triage: classify a customer message, then write a reply."""

    inputs = ("message",)
    gold = {"classify": "category", "reply": "reply"}

    def __init__(self) -> None:
        super().__init__()
        self.classify = Classifier(
            {"message": "a customer support message"},
            output="category",
            labels=TRIAGE_LABELS,
            instructions="Classify the customer support message into the team that should handle it.",
        )
        self.reply = Writer(
            {"message": "a customer support message", "category": "the team handling it"},
            output="reply",
            instructions="Write a short, polite and concrete reply to the customer, in the customer's language.",
            rules={"min_words": 5, "max_words": 60},
        )

    def forward(self, message: str) -> dspy.Prediction:
        category = self.classify(message=message).category
        reply = self.reply(message=message, category=category).reply
        return dspy.Prediction(category=category, reply=reply)


def demo_database() -> Path:
    """The demo shop database file, created on first use.

    It lives in ``$PIPEC_HOME`` (default ``~/.cache/pipec``) under a name that carries the hash of
    its schema, so a changed schema never meets a stale file. It is created in a temporary file
    and renamed into place, so concurrent first uses never see a half-written database.
    """
    home = Path(os.environ.get("PIPEC_HOME") or Path.home() / ".cache" / "pipec")
    digest = hashlib.sha256(sql_demo.SCHEMA_SQL.encode()).hexdigest()[:12]
    path = home / f"demo_shop-{digest}.duckdb"
    if not path.exists():
        home.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=home) as tmp:
            sql_demo.create_demo_db(Path(tmp) / path.name)
            os.replace(Path(tmp) / path.name, path)
    return path


class SqlQA(Pipeline):
    """Question answering over a DuckDB database: write SQL, run it, answer in one sentence.

    Args:
        database: The DuckDB file to query; the demo shop database by default.
    """

    inputs = ("question",)
    gold = {"generate": "sql", "answer": "answer"}

    def __init__(self, database: str | os.PathLike | None = None) -> None:
        super().__init__()
        self.database = str(database or demo_database())
        if not Path(self.database).exists():
            raise PipelineError(f"database {self.database} does not exist")
        self.schema = sql_demo.schema_description()
        self.generate = CodeGen(
            {"question": "a question about the data", "db_schema": "the tables and their columns"},
            output="sql",
            database=self.database,
            instructions="Write one DuckDB SQL SELECT query over the given schema that answers the question.",
        )
        self.answer = Writer(
            {"question": "the question", "sql_result": "the result of the query that answers it"},
            output="answer",
            instructions="Answer the question in one sentence using the query result, in the question's language.",
            rules={"min_words": 3, "max_words": 50, "max_sentences": 2},
        )

    def forward(self, question: str) -> dspy.Prediction:
        sql = self.generate(question=question, db_schema=self.schema).sql
        result = run_readonly(self.database, sql, max_rows=50).as_text(max_rows=10)
        answer = self.answer(question=question, sql_result=result).answer
        return dspy.Prediction(sql=sql, sql_result=result, answer=answer)


BUILTINS: dict[str, type[Pipeline]] = {"triage": Triage, "sql": SqlQA}


def builtin_dataset(name: str) -> Path:
    """The bundled example dataset of the built-in pipeline ``name``."""
    if name not in BUILTINS:
        raise PipelineError(f"unknown built-in pipeline {name!r}; choose one of: {', '.join(BUILTINS)}")
    return DATA_DIR / f"{name}.jsonl"
