"""CodeGen settings on the scripted LM and the real demo database: schema linking, the SQL
grammar, execution-guided repair and self-consistency by execution."""

import re

import dspy
import pytest

from experiments.evaluate import lm_usage
from programs import CodeGen, PipelineError
from programs.builtin import demo_database
from programs.sql_steps import majority, repair_signature
from programs.sqlexec import QueryResult
from programs.trace import capture
from tests.fakes import fake_lm


def codegen(**settings):
    return CodeGen({"question": "a question", "db_schema": "the tables"}, output="sql",
                   database=str(demo_database()), **settings)


def call(node, respond, question="how many customers live in paris?"):
    lm, engine = fake_lm(respond)
    with dspy.context(lm=lm.lm, adapter=lm.adapter), lm_usage() as usage, capture(node) as calls:
        sql = node(question=question, db_schema="THE WHOLE SCHEMA").sql
    return sql, engine, usage, calls


def test_schema_linking_puts_the_linked_tables_and_value_hints_in_the_prompt():
    seen = []

    def respond(fields, inputs):
        seen.append(inputs["db_schema"])
        return {"sql": "SELECT count(*) FROM customers WHERE city = 'Paris'"}

    sql, _, usage, _ = call(codegen(schema_linking=True), respond)
    assert usage.calls == 1 and sql.startswith("SELECT")
    schema = seen[0]
    assert "THE WHOLE SCHEMA" not in schema
    assert "customers(" in schema and "products(" not in schema
    assert "'paris' is a value of customers.city" in schema


def test_without_linking_the_callers_schema_is_used():
    seen = []
    call(codegen(), lambda f, i: seen.append(i["db_schema"]) or {"sql": "SELECT 1"})
    assert seen == ["THE WHOLE SCHEMA"]


def test_grammar_sends_a_schema_pattern_that_admits_only_real_names():
    _, engine, _, _ = call(codegen(grammar=True), lambda f, i: {"sql": "SELECT 1"})
    prop = engine.requests[0].config.response_format["schema"]["properties"]["sql"]
    pattern = prop["pattern"]
    assert re.fullmatch(pattern, "SELECT count(*) FROM customers WHERE city = 'Paris'")
    assert not re.fullmatch(pattern, "SELECT count(*) FROM clients")
    # Without the setting the schema has no pattern.
    _, plain, _, _ = call(codegen(), lambda f, i: {"sql": "SELECT 1"})
    assert "pattern" not in plain.requests[0].config.response_format["schema"]["properties"]["sql"]


def test_repair_retries_a_failing_query_once_with_the_error():
    def respond(fields, inputs):
        if "error" in inputs:
            return {"sql": "SELECT count(*) FROM customers WHERE city = 'Paris'"}
        return {"sql": "SELECT count(*) FROM customer WHERE city = 'Paris'"}

    sql, engine, usage, calls = call(codegen(repair=True), respond)
    assert usage.calls == 2 and sql == "SELECT count(*) FROM customers WHERE city = 'Paris'"
    retry = engine.requests[1].messages[-1].parts
    text = "".join(getattr(p, "text", "") for p in retry) if not isinstance(retry, str) else retry
    assert "customer" in text and "failed_sql" in text
    # One node call holds both LM calls and the repaired query.
    assert [(c.output, c.lm_calls) for c in calls] == [(sql, 2)]


def test_repair_makes_no_second_call_for_a_query_that_runs():
    _, _, usage, _ = call(codegen(repair=True), lambda f, i: {"sql": "SELECT count(*) FROM customers"})
    assert usage.calls == 1


def test_self_consistency_picks_the_result_most_samples_share():
    answers = iter(["SELECT 1", "SELECT 2", "SELECT 1 + 1"])
    sql, engine, usage, calls = call(codegen(samples=3), lambda f, i: {"sql": next(answers)})
    assert usage.calls == 3 and sql == "SELECT 2"
    temperatures = [r.config.temperature for r in engine.requests]
    assert temperatures[0] == 0.0 and temperatures[1] == temperatures[2] == 0.7
    assert [(c.output, c.lm_calls) for c in calls] == [("SELECT 2", 3)]


def test_majority_ties_go_to_the_earliest_and_failures_never_win():
    ok = QueryResult(("x",), ((1,),))
    other = QueryResult(("x",), ((2,),))
    failed = QueryResult(error="boom")
    assert majority([ok, other]) == 0
    assert majority([failed, other, other]) == 1
    assert majority([failed, failed]) is None


def test_repair_signature_adds_the_failed_query_and_error():
    signature = codegen().signature
    repaired = repair_signature(signature)
    assert list(repaired.input_fields) == ["question", "db_schema", "failed_sql", "error"]
    assert "corrected" in repaired.instructions


def test_bad_settings_are_pipeline_errors():
    with pytest.raises(PipelineError, match="samples"):
        codegen(samples=0)
    with pytest.raises(PipelineError, match="database"):
        CodeGen("question", repair=True)
