"""Build the small demo shop database used by the built-in ``sql`` pipeline.

The database has three tables (``customers``, ``products`` and ``orders``) filled with a small,
fixed set of rows, so gold queries in ``programs/data/sql.jsonl`` always return the same results.
"""

from __future__ import annotations

import os
import pathlib

SCHEMA_SQL: str = """
CREATE TABLE customers (
    id INTEGER PRIMARY KEY,
    name VARCHAR,
    city VARCHAR,
    signup_date DATE
);

CREATE TABLE products (
    id INTEGER PRIMARY KEY,
    name VARCHAR,
    category VARCHAR,
    price DECIMAL(10, 2)
);

CREATE TABLE orders (
    id INTEGER PRIMARY KEY,
    customer_id INTEGER,
    product_id INTEGER,
    quantity INTEGER,
    order_date DATE,
    status VARCHAR
);

INSERT INTO customers VALUES
    (1, 'Alice Martin', 'London', DATE '2023-01-15'),
    (2, 'Bruno Costa', 'Lisbon', DATE '2023-02-03'),
    (3, 'Chloe Dubois', 'Paris', DATE '2023-03-22'),
    (4, 'David Kim', 'Seoul', DATE '2023-04-10'),
    (5, 'Emma Schulz', 'Berlin', DATE '2023-05-05'),
    (6, 'Farid Haddad', 'Paris', DATE '2023-06-18'),
    (7, 'Grace Okafor', 'London', DATE '2023-08-30'),
    (8, 'Hugo Lind', 'Berlin', DATE '2023-11-12'),
    (9, '佐藤 花子', '東京', DATE '2024-01-09'),
    (10, '鈴木 一郎', '東京', DATE '2024-02-14'),
    (11, 'Isabel Ruiz', 'Madrid', DATE '2024-03-01'),
    (12, 'Jonas Berg', 'Lisbon', DATE '2024-04-20');

INSERT INTO products VALUES
    (1, 'Wireless Mouse', 'Electronics', 24.99),
    (2, 'Mechanical Keyboard', 'Electronics', 89.00),
    (3, 'USB-C Hub', 'Electronics', 39.50),
    (4, 'Noise-Cancelling Headphones', 'Electronics', 199.00),
    (5, 'Desk Lamp', 'Home', 34.00),
    (6, 'Ceramic Mug', 'Home', 12.50),
    (7, 'Office Chair', 'Furniture', 249.00),
    (8, 'Standing Desk', 'Furniture', 429.00),
    (9, 'Notebook Pack', 'Stationery', 9.75),
    (10, 'Fountain Pen', 'Stationery', 45.00);

INSERT INTO orders VALUES
    (1, 1, 2, 1, DATE '2024-01-05', 'shipped'),
    (2, 1, 6, 4, DATE '2024-01-05', 'shipped'),
    (3, 2, 1, 2, DATE '2024-01-12', 'shipped'),
    (4, 3, 8, 1, DATE '2024-01-20', 'shipped'),
    (5, 4, 4, 1, DATE '2024-02-02', 'shipped'),
    (6, 5, 9, 10, DATE '2024-02-10', 'shipped'),
    (7, 6, 5, 2, DATE '2024-02-15', 'cancelled'),
    (8, 7, 7, 1, DATE '2024-02-28', 'shipped'),
    (9, 9, 10, 2, DATE '2024-03-03', 'shipped'),
    (10, 10, 3, 1, DATE '2024-03-08', 'shipped'),
    (11, 3, 6, 6, DATE '2024-03-15', 'shipped'),
    (12, 2, 4, 1, DATE '2024-03-21', 'cancelled'),
    (13, 8, 2, 1, DATE '2024-04-02', 'shipped'),
    (14, 11, 1, 1, DATE '2024-04-09', 'shipped'),
    (15, 1, 4, 1, DATE '2024-04-18', 'shipped'),
    (16, 4, 9, 5, DATE '2024-04-25', 'pending'),
    (17, 5, 7, 2, DATE '2024-05-03', 'shipped'),
    (18, 9, 5, 1, DATE '2024-05-11', 'shipped'),
    (19, 12, 3, 3, DATE '2024-05-19', 'shipped'),
    (20, 6, 10, 1, DATE '2024-05-27', 'shipped'),
    (21, 7, 1, 3, DATE '2024-06-04', 'cancelled'),
    (22, 10, 8, 1, DATE '2024-06-12', 'shipped'),
    (23, 3, 2, 1, DATE '2024-06-20', 'shipped'),
    (24, 11, 6, 2, DATE '2024-06-28', 'pending'),
    (25, 2, 9, 8, DATE '2024-07-06', 'shipped'),
    (26, 1, 3, 2, DATE '2024-07-14', 'pending'),
    (27, 9, 4, 1, DATE '2024-07-22', 'pending'),
    (28, 5, 1, 1, DATE '2024-07-30', 'shipped'),
    (29, 12, 5, 2, DATE '2024-08-07', 'cancelled'),
    (30, 4, 10, 1, DATE '2024-08-15', 'pending');
"""

_TABLES: dict[str, list[tuple[str, str]]] = {
    "customers": [("id", "INTEGER"), ("name", "VARCHAR"), ("city", "VARCHAR"), ("signup_date", "DATE")],
    "products": [("id", "INTEGER"), ("name", "VARCHAR"), ("category", "VARCHAR"), ("price", "DECIMAL(10,2)")],
    "orders": [
        ("id", "INTEGER"),
        ("customer_id", "INTEGER"),
        ("product_id", "INTEGER"),
        ("quantity", "INTEGER"),
        ("order_date", "DATE"),
        ("status", "VARCHAR"),
    ],
}


def create_demo_db(path: str | os.PathLike) -> pathlib.Path:
    """Create the demo shop database as a DuckDB file.

    Any existing file at ``path`` (and its write-ahead log) is removed first, so the result is always
    the same fixed data set.

    Args:
        path: Where to write the DuckDB database file. Parent directories are created if needed.

    Returns:
        The path of the created database file.
    """
    import duckdb

    db_path = pathlib.Path(path)
    db_path.parent.mkdir(parents=True, exist_ok=True)
    for stale in (db_path, db_path.with_name(db_path.name + ".wal")):
        stale.unlink(missing_ok=True)
    con = duckdb.connect(str(db_path))
    try:
        con.execute(SCHEMA_SQL)
    finally:
        con.close()
    return db_path


def schema_description() -> str:
    """Describe the demo tables and their columns for use in prompts.

    Returns:
        One line per table, e.g. ``customers(id INTEGER, name VARCHAR, city VARCHAR, signup_date DATE)``.
    """
    return "\n".join(
        f"{table}({', '.join(f'{col} {typ}' for col, typ in cols)})" for table, cols in _TABLES.items()
    )
