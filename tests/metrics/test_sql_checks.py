"""SQL checks against real DuckDB: the static pass, result comparison, and a hostile corpus that
must not escape the sandbox."""

import hashlib
import time

import pytest

from metrics.sql_checks import SqlResultMatch, analyze_sql
from programs import CodeGen
from programs.builtin import demo_database
from programs.sql_demo import _TABLES, create_demo_db
from programs.sqlexec import SANDBOX_CONFIG, run_readonly
from tests.metrics.hostile_sql import HOSTILE_SQL

SCHEMA = {table: tuple(column for column, _ in columns) for table, columns in _TABLES.items()}
TIMEOUT = 1.5


@pytest.fixture
def node():
    return CodeGen("question", database=str(demo_database()))


def test_unknown_column_gets_the_table_and_a_suggestion():
    problems = analyze_sql("select quantiti from orders", SCHEMA).problems
    assert problems == ("column `quantiti` does not exist; table `orders` has id, customer_id, product_id, "
                        "quantity, order_date, status. Did you mean `quantity`?",)
    qualified = analyze_sql("select c.nme from customers c", SCHEMA).problems
    assert qualified[0].startswith("column `c.nme` does not exist; table `customers` has") and "`name`" in qualified[0]


def test_unknown_table_gets_a_suggestion():
    (problem,) = analyze_sql("select * from order", SCHEMA).problems
    assert problem == "table `order` does not exist. Did you mean `orders`? The tables are customers, products, orders."


def test_valid_duckdb_sql_has_no_false_alarms():
    for sql in ("with t as (select id, quantity * 2 as q from orders) select q from t where q > 1",
                "select status, count(*) as n from orders group by status having n > 1 order by n desc",
                "select x from range(3) r(x)", "select name as n from customers where n like 'A%'",
                "select o.id from orders o where exists (select 1 from customers c where c.id = o.customer_id)",
                "select id from orders where exists (select 1 from customers where id = customer_id)",
                "select * exclude (id) from orders", "select list_transform([1, 2], x -> x + 1)",
                "with recursive t(n) as (select 1 union all select n + 1 from t where n < 5) select count(*) from t",
                "select a, b from (select 1, 2) s(a, b)"):
        analysis = analyze_sql(sql, SCHEMA)
        assert analysis.refusal is None and analysis.problems == (), sql


def test_parse_errors_and_statement_types():
    assert analyze_sql("select count(*) from orders where", SCHEMA).problems[0].startswith(
        "the SQL does not parse (line 1, column 33)")
    assert analyze_sql("select 1; select 2", SCHEMA).refusal.startswith("2 statements")
    assert analyze_sql("INSERT INTO orders VALUES (1)", SCHEMA).refusal.startswith("INSERT statements are not allowed")
    assert "reads outside the database" in analyze_sql("select * from read_csv('/x')", SCHEMA).refusal
    assert analyze_sql("select * from t order by 1", {}).ordered and not analyze_sql("select 1", {}).ordered


def test_a_failing_query_carries_duckdb_error_and_the_explanation(node):
    verdict = SqlResultMatch()("select quantiti from orders", gold="select quantity from orders", node=node)
    assert not verdict.passed and verdict.score == 0.0
    assert verdict.feedback.startswith("the SQL failed: Binder Error")
    assert "Did you mean `quantity`?" in verdict.feedback and verdict.details["error"]


def test_result_differences_are_named(node):
    check = SqlResultMatch()
    columns = check("select id, name from customers", gold="select id from customers", node=node)
    assert "missing columns" not in columns.feedback and "extra columns: name." in columns.feedback
    rows = check("select id from customers where id < 3", gold="select id from customers where id < 4", node=node)
    assert rows.feedback == "the result has 2 row(s), expected 3. missing rows: [(3,)]."
    assert check("select id from customers order by id desc", gold="select id from customers", node=node).passed


def test_gold_results_are_reused(node, monkeypatch):
    import metrics.sql_checks as module

    calls = []
    real = module.run_readonly
    monkeypatch.setattr(module, "run_readonly", lambda db, sql, **kw: calls.append(sql) or real(db, sql, **kw))
    check = SqlResultMatch()
    for _ in range(3):
        check("select count(*) from orders", gold="select count(*) as n from orders", node=node)
    assert calls.count("select count(*) as n from orders") == 1


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    database = create_demo_db(root / "db" / "shop.duckdb")
    sentinel = root / "sentinel.csv"
    sentinel.write_text("secret_column\nTOP-SECRET-4711\n", encoding="utf-8")
    outside = root / "outside"
    outside.mkdir()
    return database, sentinel, outside


def _snapshot(*directories):
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for d in directories for p in sorted(d.rglob("*"))
            if p.is_file()}


@pytest.mark.parametrize("name", sorted(HOSTILE_SQL))
def test_hostile_sql_is_refused_or_contained(sandbox, name):
    database, sentinel, outside = sandbox
    sql = HOSTILE_SQL[name].format(sentinel=sentinel, tmp=outside)
    before = _snapshot(database.parent, outside, sentinel.parent)
    node = CodeGen("question", database=str(database))

    started = time.perf_counter()
    verdict = SqlResultMatch(timeout=TIMEOUT)(sql, gold="select count(*) from orders", node=node)
    judged = time.perf_counter() - started
    started = time.perf_counter()
    direct = run_readonly(database, sql, timeout=TIMEOUT)  # the sandbox alone, without the static pass
    ran = time.perf_counter() - started

    assert verdict.score == 0.0 and not verdict.passed
    assert verdict.feedback and "\n" not in verdict.feedback
    assert not direct.ok and direct.error
    assert not direct.details.get("sandbox_changed")
    assert "TOP-SECRET" not in verdict.feedback + direct.error
    assert judged < TIMEOUT + 1.0 and ran < TIMEOUT + 1.0, (judged, ran)
    assert _snapshot(database.parent, outside, sentinel.parent) == before


def test_the_corpus_is_large_enough():
    assert len(HOSTILE_SQL) >= 50


def test_after_the_corpus_the_sandbox_settings_are_intact(sandbox):
    database, _, _ = sandbox
    names = ", ".join(f"'{k}'" for k in [*SANDBOX_CONFIG, "lock_configuration", "enable_progress_bar"])
    result = run_readonly(database, f"select name, value from duckdb_settings() where name in ({names})")
    settings = dict(result.rows)
    assert settings["enable_external_access"] == "false" and settings["lock_configuration"] == "true"
    assert settings["autoload_known_extensions"] == "false" and settings["autoinstall_known_extensions"] == "false"
    assert settings["enable_progress_bar"] == "false" and settings["memory_limit"] != ""


def test_the_check_survives_a_deepcopy(node):
    import copy

    check = copy.deepcopy(SqlResultMatch(timeout=2.0))
    assert check.timeout == 2.0 and check("select 1", gold="select 1", node=node).passed
