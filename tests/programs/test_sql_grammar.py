"""The SQL token pattern: real names only, valid JSON inside, and the subset llama.cpp converts."""

import json
import re

from programs.sql_grammar import sql_pattern

SCHEMA = {"RESTAURANT": ["ID", "NAME", "FOOD_TYPE"], "LOCATION": [("RESTAURANT_ID", "INTEGER"), ("CITY_NAME", "TEXT")]}


def test_schema_names_keywords_literals_and_aliases_pass_and_invented_names_do_not():
    p = sql_pattern(SCHEMA)
    assert re.fullmatch(p, "SELECT COUNT( * ) FROM RESTAURANT AS RESTAURANTalias0 WHERE "
                           "RESTAURANTalias0.FOOD_TYPE = 'french'")
    assert re.fullmatch(p, "select T1.name from restaurant as T1 where T1.ID = 3;")
    assert re.fullmatch(p, "SELECT NAME FROM RESTAURANT WHERE ID IN (SELECT RESTAURANT_ID FROM LOCATION) "
                           "ORDER BY NAME DESC")
    assert not re.fullmatch(p, "SELECT CITY FROM RESTAURANT")
    assert not re.fullmatch(p, "SELECT NAME FROM RESTAURANTS")
    assert not re.fullmatch(p, "SELECT NAME FROM r")


def test_lowercase_literals_and_json_safety():
    lower = sql_pattern(SCHEMA, lowercase_literals=True)
    assert re.fullmatch(lower, "SELECT NAME FROM RESTAURANT WHERE FOOD_TYPE = 'french'")
    assert not re.fullmatch(lower, "SELECT NAME FROM RESTAURANT WHERE FOOD_TYPE = 'French'")
    p = sql_pattern(SCHEMA)
    assert not re.fullmatch(p, 'SELECT NAME FROM RESTAURANT WHERE NAME = "x"')
    assert not re.fullmatch(p, "SELECT NAME\nFROM RESTAURANT")
    json.dumps({"pattern": p})  # plain data


def test_the_pattern_uses_only_what_the_llama_cpp_converter_reads():
    p = sql_pattern(SCHEMA)
    assert p.startswith("^") and p.endswith("$")
    assert "(?" not in p  # no non-capturing groups or lookarounds
