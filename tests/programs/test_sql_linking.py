"""Schema linking: the tables a question needs, value hints and join hints, from a real database."""

from programs.builtin import demo_database
from programs.sql_linking import (
    database_schema,
    database_values,
    link_schema,
    linked_schema_text,
    text_is_lowercase,
)

SCHEMA = {
    "GEOGRAPHIC": (("CITY_NAME", "VARCHAR"), ("COUNTY", "VARCHAR"), ("REGION", "VARCHAR")),
    "RESTAURANT": (("ID", "INTEGER"), ("NAME", "VARCHAR"), ("FOOD_TYPE", "VARCHAR"), ("CITY_NAME", "VARCHAR")),
    "LOCATION": (("RESTAURANT_ID", "INTEGER"), ("HOUSE_NUMBER", "INTEGER"), ("STREET_NAME", "VARCHAR")),
}
VALUES = {"bay area": (("GEOGRAPHIC", "REGION"),), "french": (("RESTAURANT", "FOOD_TYPE"),),
          "area": (("GEOGRAPHIC", "REGION"),)}


def test_value_hints_prefer_the_longest_span_and_keep_their_tables():
    linked = link_schema("any french food in the bay area?", SCHEMA, VALUES)
    assert linked.hints == (("bay area", (("GEOGRAPHIC", "REGION"),)), ("french", (("RESTAURANT", "FOOD_TYPE"),)))
    assert set(linked.tables) == {"GEOGRAPHIC", "RESTAURANT"}


def test_join_hints_come_from_key_names():
    linked = link_schema("restaurant location street", SCHEMA, {})
    assert "LOCATION.RESTAURANT_ID = RESTAURANT.ID" in linked.joins
    text = linked_schema_text(linked)
    assert text.startswith("RESTAURANT(") or "RESTAURANT(ID INTEGER" in text
    assert "Joins: LOCATION.RESTAURANT_ID = RESTAURANT.ID" in text


def test_a_question_that_links_to_nothing_keeps_the_whole_schema():
    assert set(link_schema("hello there", SCHEMA, {}).tables) == set(SCHEMA)


def test_over_the_column_budget_only_linked_and_key_columns_stay():
    linked = link_schema("french restaurant", SCHEMA, VALUES, max_columns=3)
    assert linked.tables["RESTAURANT"] == (("ID", "INTEGER"), ("FOOD_TYPE", "VARCHAR"))


def test_the_demo_database_is_read_for_columns_values_and_case():
    db = demo_database()
    schema = database_schema(db)
    assert ("city", "VARCHAR") in schema["customers"]
    values = database_values(db)
    assert ("customers", "city") in values["paris"]
    assert ("customers", "name") in values["佐藤 花子"]  # Japanese values are indexed as stored
    assert text_is_lowercase(db) is False
