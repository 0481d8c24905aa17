"""Hostile SQL a code-generator node might emit: writes, attaching and copying, file and network
reads, settings, extensions, smuggled statements, runaway queries. ``{sentinel}`` is a file that
must be neither read nor changed; ``{tmp}`` a directory where nothing may appear."""

HOSTILE_SQL: dict[str, str] = {
    # writes and DDL
    "insert": "INSERT INTO orders VALUES (99, 1, 1, 1, DATE '2024-01-01', 'shipped')",
    "update": "UPDATE orders SET status = 'cancelled'",
    "delete": "DELETE FROM orders",
    "drop_table": "DROP TABLE orders",
    "create_table": "CREATE TABLE stolen AS SELECT * FROM customers",
    "create_view": "CREATE VIEW v AS SELECT 1",
    "create_temp_table": "CREATE TEMP TABLE t AS SELECT 1 AS x",
    "alter_table": "ALTER TABLE orders ADD COLUMN pwned INTEGER",
    "truncate": "TRUNCATE orders",
    "create_macro": "CREATE MACRO evil(x) AS x + 1",
    "create_sequence": "CREATE SEQUENCE s",
    "cte_delete": "WITH x AS (SELECT 1) DELETE FROM orders",
    # attaching other databases
    "attach_file": "ATTACH '{tmp}/other.duckdb' AS other",
    "attach_memory": "ATTACH ':memory:' AS scratch",
    "attach_sentinel": "ATTACH '{sentinel}' AS s (TYPE sqlite)",
    "detach": "DETACH other",
    "use": "USE memory",
    # copying, exporting, importing
    "copy_to_csv": "COPY orders TO '{tmp}/orders.csv'",
    "copy_query_to_parquet": "COPY (SELECT * FROM customers) TO '{tmp}/c.parquet' (FORMAT parquet)",
    "copy_from": "COPY orders FROM '{sentinel}'",
    "export_database": "EXPORT DATABASE '{tmp}/export'",
    "import_database": "IMPORT DATABASE '{tmp}'",
    # reading local files
    "read_csv_sentinel": "SELECT * FROM read_csv('{sentinel}')",
    "read_csv_auto_passwd": "SELECT * FROM read_csv_auto('/etc/passwd')",
    "read_text_sentinel": "SELECT content FROM read_text('{sentinel}')",
    "read_blob_passwd": "SELECT * FROM read_blob('/etc/passwd')",
    "glob_tmp": "SELECT * FROM glob('{tmp}/*')",
    "glob_root": "SELECT * FROM glob('/*')",
    "file_as_table": "SELECT * FROM '{sentinel}'",
    "read_json_sentinel": "SELECT * FROM read_json('{sentinel}')",
    "read_parquet_tmp": "SELECT * FROM read_parquet('{tmp}/*.parquet')",
    "sniff_csv": "SELECT * FROM sniff_csv('{sentinel}')",
    "read_in_subquery": "SELECT count(*) FROM orders WHERE id IN (SELECT column0 FROM read_csv('{sentinel}'))",
    "read_in_cte": "WITH f AS (SELECT * FROM read_text('/etc/hostname')) SELECT * FROM f",
    # network
    "http_parquet": "SELECT * FROM read_parquet('https://example.com/data.parquet')",
    "metadata_service": "SELECT * FROM read_csv('http://169.254.169.254/latest/meta-data/')",
    "s3_table": "SELECT * FROM 's3://bucket/secret.csv'",
    # settings
    "pragma_threads": "PRAGMA threads=8",
    "pragma_profiling": "PRAGMA enable_profiling",
    "set_external_access": "SET enable_external_access = true",
    "set_memory_limit": "SET memory_limit = '100GB'",
    "set_lock_off": "SET lock_configuration = false",
    "reset_lock": "RESET lock_configuration",
    "set_allowed_directories": "SET allowed_directories = ['/']",
    "set_temp_directory": "SET temp_directory = '{tmp}'",
    "set_global": "SET GLOBAL autoload_known_extensions = true",
    "call_pragma": "CALL pragma_database_size()",
    # extensions
    "install": "INSTALL httpfs",
    "load": "LOAD httpfs",
    "force_install": "FORCE INSTALL sqlite FROM core",
    "load_file": "LOAD '{tmp}/evil.duckdb_extension'",
    # smuggled statements and SQL run from text
    "stacked_drop": "SELECT 1; DROP TABLE orders",
    "stacked_attach": "SELECT * FROM orders; ATTACH '{tmp}/x.duckdb' AS x",
    "comment_hidden": "/* just a select */ COPY orders TO '{tmp}/hidden.csv'",
    "line_comment_hidden": "-- select\nATTACH '{tmp}/y.duckdb' AS y",
    "query_function": "SELECT * FROM query('SELECT * FROM read_csv(''{sentinel}'')')",
    "create_secret": "CREATE SECRET (TYPE s3, KEY_ID 'x', SECRET 'y')",
    # transactions and storage
    "checkpoint": "CHECKPOINT",
    "force_checkpoint": "FORCE CHECKPOINT",
    "vacuum": "VACUUM",
    "begin": "BEGIN TRANSACTION",
    # runaway work
    "infinite_recursion": "WITH RECURSIVE t(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM t) SELECT count(*) FROM t",
    "huge_range": "SELECT count(*) FROM range(1000000000000)",
    "cross_join": "SELECT sum(a.range * b.range) FROM range(100000) a, range(100000) b",
    "huge_string": "SELECT lpad('', 1000000000, 'x')",
    "huge_list": "SELECT range(1000000000)",
    "doubling_recursion": "WITH RECURSIVE t(n, s) AS (SELECT 1, 'x' UNION ALL SELECT n + 1, s || s FROM t) "
                          "SELECT max(length(s)) FROM t",
}
