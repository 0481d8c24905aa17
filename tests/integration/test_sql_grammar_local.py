"""The schema grammar on the real embedded model: llama.cpp decodes the SQL inside the pattern."""

import re

import dspy
import pytest

from experiments.lm import make_lm
from programs import CodeGen
from programs.builtin import demo_database
from programs.sql_grammar import sql_pattern
from programs.sql_linking import database_schema

pytestmark = pytest.mark.integration


def test_the_query_the_model_writes_under_the_grammar_names_only_real_tables_and_columns():
    database = str(demo_database())
    node = CodeGen({"question": "a question", "db_schema": "the tables"}, database=database, grammar=True,
                   max_tokens=160)
    pattern = sql_pattern(database_schema(database))
    config = make_lm("local", cache=False)
    with dspy.context(lm=config.lm, adapter=config.adapter):
        sql = node(question="東京の顧客は何人ですか？", db_schema="customers(id, name, city, signup_date)").sql
    assert re.fullmatch(pattern, sql), sql
