import json

import duckdb

from programs.builtin import TRIAGE_LABELS, SqlQA, Triage, builtin_dataset, demo_database
from programs.sqlexec import run_readonly


def _rows(name):
    return [json.loads(line) for line in builtin_dataset(name).read_text(encoding="utf-8").splitlines() if line]


def test_triage_dataset_has_gold_for_every_node_and_valid_labels():
    rows = _rows("triage")
    assert len(rows) >= 40
    fields = Triage().required_fields()
    assert all(all(row.get(f) for f in fields) for row in rows)
    assert {row["category"] for row in rows} == set(TRIAGE_LABELS)


def test_sql_dataset_gold_queries_run_on_the_demo_database():
    rows = _rows("sql")
    assert len(rows) >= 40
    database = demo_database()
    for row in rows:
        result = run_readonly(database, row["sql"])
        assert result.ok, (row["sql"], result.error)
        assert result.rows, row["sql"]
        assert row["answer"].strip()


def test_demo_database_is_created_once_and_reused(tmp_path):
    first = demo_database()
    mtime = first.stat().st_mtime_ns
    assert demo_database() == first and first.stat().st_mtime_ns == mtime
    con = duckdb.connect(str(first), read_only=True)
    try:
        tables = {r[0] for r in con.execute("select table_name from information_schema.tables").fetchall()}
    finally:
        con.close()
    assert {"customers", "products", "orders"} <= tables


def test_sql_pipeline_points_its_codegen_node_at_the_database():
    pipeline = SqlQA()
    assert pipeline.generate.database == pipeline.database
    assert "orders(" in pipeline.schema
