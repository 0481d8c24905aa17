import time

from programs.builtin import demo_database
from programs.sqlexec import MAX_CELL_CHARS, run_readonly, table_columns


def test_select_returns_columns_and_rows():
    result = run_readonly(demo_database(), "select 1 as one, '東京' as city")
    assert result.ok and result.columns == ("one", "city") and result.rows == ((1, "東京"),)
    assert result.as_text() == "one | city\n1 | 東京"


def test_errors_are_data():
    result = run_readonly(demo_database(), "select nope from orders")
    assert not result.ok and "nope" in result.error
    assert result.as_text().startswith("ERROR: ")
    assert run_readonly(demo_database(), "  ;").error == "empty query"


def test_connection_is_read_only():
    result = run_readonly(demo_database(), "create table t(x int)")
    assert not result.ok and "read-only" in result.error.lower()


def test_row_cap_marks_truncation():
    result = run_readonly(demo_database(), "select * from range(10)", max_rows=3)
    assert len(result.rows) == 3 and result.truncated


def test_only_a_single_select_runs():
    assert run_readonly(demo_database(), "select 1; select 2").error.startswith("2 statements")
    refused = run_readonly(demo_database(), "attach ':memory:' as m")
    assert refused.error.startswith("ATTACH statements are not allowed") and refused.details["refused"]
    assert run_readonly(demo_database(), "with t as (select 1 as x) select x from t").rows == ((1,),)


def test_files_and_settings_are_out_of_reach(tmp_path):
    secret = tmp_path / "secret.csv"
    secret.write_text("a\n1\n", encoding="utf-8")
    result = run_readonly(demo_database(), f"select * from read_csv('{secret}')")
    assert "file system operations are disabled" in result.error
    assert run_readonly(demo_database(), "select current_setting('lock_configuration')").rows == ((True,),)


def test_a_runaway_query_is_stopped_at_the_timeout():
    for isolate in (True, False):
        started = time.perf_counter()
        result = run_readonly(demo_database(), "select sum(a.range * b.range) from range(100000) a, range(100000) b",
                              timeout=0.5, isolate=isolate)
        assert result.error == "the query ran longer than 0.5 s and was stopped"
        assert time.perf_counter() - started < 1.5


def test_an_uninterruptible_query_is_killed_with_its_process():
    started = time.perf_counter()
    result = run_readonly(demo_database(), "select lpad('', 1000000000, 'x')", timeout=1.0)
    assert not result.ok and time.perf_counter() - started < 2.0


def test_long_cells_are_cut():
    result = run_readonly(demo_database(), "select repeat('x', 20000) as long")
    assert len(result.rows[0][0]) == MAX_CELL_CHARS and result.truncated


def test_table_columns_reads_the_schema():
    tables = table_columns(demo_database())
    assert tables["orders"] == ("id", "customer_id", "product_id", "quantity", "order_date", "status")
    assert set(tables) == {"customers", "products", "orders"}
