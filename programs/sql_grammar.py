"""Grammar-constrained SQL: a token pattern built from a database schema.

With an LM that decodes under a grammar (the embedded llama.cpp model), a SQL node can be kept
from inventing names: ``sql_pattern`` turns the schema into a regular expression over SQL
tokens (keywords, the schema's real table and column names, aliases, quoted literals, numbers,
operators and brackets), and the node's JSON schema carries it as the output string's
``pattern``. llama.cpp compiles a JSON schema with a ``pattern`` into its grammar, so every
sampled character keeps the query inside the pattern. The pattern checks tokens, not syntax: it
cannot make a query right, only free of names the database does not have.

The pattern uses only what llama.cpp's JSON-schema converter supports (``^...$``, plain groups,
``|``, classes, ``*+?``) and never admits ``"``, ``\\`` or a line break, so the JSON answer
around it stays valid. Nothing here imports llama_cpp: the pattern is data.

Example:
    >>> import re
    >>> p = sql_pattern({"orders": ["id", "total"]})
    >>> bool(re.fullmatch(p, "SELECT total FROM orders WHERE id = 3"))
    True
    >>> bool(re.fullmatch(p, "SELECT totl FROM orders"))
    False
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = ["SQL_KEYWORDS", "grammar_adapter", "sql_pattern"]

SQL_KEYWORDS = (
    "SELECT", "DISTINCT", "FROM", "WHERE", "AND", "OR", "NOT", "IN", "AS", "ON", "JOIN", "INNER", "LEFT",
    "GROUP", "BY", "ORDER", "HAVING", "LIMIT", "ASC", "DESC", "LIKE", "ILIKE", "IS", "NULL", "BETWEEN",
    "COUNT", "MAX", "MIN", "AVG", "SUM", "LOWER", "UPPER", "CASE", "WHEN", "THEN", "ELSE", "END", "EXISTS",
    "UNION", "ALL",
)
"""The keywords and functions a constrained query may use, each in upper or lower case."""


def _alternatives(words: Iterable[str]) -> str:
    """The words as a prefix tree: ``(S(ELECT|UM)|C(OUNT|ITY))``.

    llama.cpp checks every vocabulary token against every open alternative of the grammar at
    each step; a flat list of a few hundred words keeps a few hundred alternatives open after
    every token (measured: tens of seconds a query on the 135M model), a prefix tree only the
    branches that share what was written so far.
    """
    trie: dict[str, Any] = {}
    for word in set(words):
        node = trie
        for char in word:
            node = node.setdefault(char, {})
        node[""] = {}  # end of a word

    def emit(node: dict[str, Any]) -> str:
        branches = [re.escape(char) + emit(child) for char, child in sorted(node.items()) if char]
        if not branches:
            return ""
        body = branches[0] if len(branches) == 1 else "(" + "|".join(branches) + ")"
        if "" in node:  # a word ends here and longer ones go on
            return f"({body})?" if len(branches) == 1 else f"{body}?"
        return body

    return "(" + emit(trie) + ")"


def sql_pattern(schema: Mapping[str, Sequence[Any]], *, lowercase_literals: bool = False) -> str:
    """A regular expression of the SQL queries whose names all come from ``schema``.

    Args:
        schema: ``{table: columns}``; a column may be a name or a ``(name, type)`` pair.
        lowercase_literals: Quoted literals may hold only lower-case letters (a database whose
            text values are all lower case): the model cannot write ``'San Francisco'``
            where ``'san francisco'`` is stored.

    Returns:
        A ``^...$`` pattern in the subset of regular expressions llama.cpp converts to a grammar.
    """
    tables = [t.split(".")[-1] for t in schema]
    columns = [c if isinstance(c, str) else c[0] for cols in schema.values() for c in cols]
    names = {*tables, *columns, *(n.lower() for n in (*tables, *columns))}
    for n in range(10):
        names.update({f"T{n}", f"t{n}", *(f"{t}alias{n}" for t in tables)})
    keywords = {*SQL_KEYWORDS, *(k.lower() for k in SQL_KEYWORDS)}
    letters = "a-z" if lowercase_literals else "a-zA-Z"
    name = _alternatives(names)
    atom = "|".join([
        _alternatives(keywords),
        f"{name}([.]{name})?",
        f"'([{letters}0-9 .,&%_/-]|'')*'",  # never a double quote or backslash: the JSON stays valid
        "[0-9]+([.][0-9]+)?",
        "(=|<>|!=|<=|>=|<|>|[*]|[+]|-|/|[(]|[)]|,)",
    ])
    return f"^({atom})( ?({atom}))*;?$"


def grammar_adapter(patterns: Mapping[str, str]) -> Any:
    """A ``dspy.JSONAdapter`` whose response schema adds a ``pattern`` to string output fields.

    DSPy's JSONAdapter derives the response JSON schema from the signature; the output field
    stays typed ``str`` (so the prompt and the parsing are unchanged) and only the schema sent to
    the LM gains the pattern. Use it for one call, inside ``dspy.context(adapter=...)``.

    Args:
        patterns: ``{output field: pattern}``.
    """
    import dspy

    class GrammarJSONAdapter(dspy.JSONAdapter):
        def _prepare_response_format(self, lm: Any, lm_kwargs: dict[str, Any], signature: Any) -> None:
            super()._prepare_response_format(lm, lm_kwargs, signature)
            model = lm_kwargs.get("response_format")
            if not isinstance(model, type) or not hasattr(model, "model_json_schema"):
                return  # JSON mode without a schema: nothing to constrain
            schema = model.model_json_schema()
            for field_name, pattern in patterns.items():
                prop = schema.get("properties", {}).get(field_name)
                if isinstance(prop, dict) and prop.get("type") == "string":
                    prop["pattern"] = pattern
            model.model_json_schema = lambda *args, **kwargs: schema  # the model is built for this call only

    return GrammarJSONAdapter()
