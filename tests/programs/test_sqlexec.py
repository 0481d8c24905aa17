from programs.builtin import demo_database
from programs.sqlexec import run_readonly


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
