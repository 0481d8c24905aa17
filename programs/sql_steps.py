"""What a SQL node does around its LM call: link the schema, constrain, repair, vote by result.

``generate_sql`` runs one ``CodeGen`` call with the node's settings, each optional:

- ``schema_linking``: the schema input is replaced by the part of the database the question
  needs, with value and join hints (``programs.sql_linking``); 0 extra LM calls.
- ``grammar``: the SQL is decoded under a token pattern built from the schema
  (``programs.sql_grammar``), for LMs that decode JSON schemas with patterns (the embedded
  llama.cpp model); 0 extra LM calls.
- ``repair``: a query that fails in DuckDB is sent back once with DuckDB's error; +1 LM call
  for a failing query only.
- ``samples`` (self-consistency by execution): ``samples`` queries, the first at the node's
  temperature and the rest sampled at ``sample_temperature``; each is run in the sandbox and the
  result set most of them return wins (ties: the earliest). ``samples - 1`` extra LM calls.

Every LM call stays inside the node's one call (``Node.forward``), so tracking sees one node
call with all its LM calls and tokens, and DSPy's trace holds the chosen query once.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any

import dspy

__all__ = ["REPAIR_INSTRUCTIONS", "generate_sql", "majority", "repair_signature", "result_key"]

logger = logging.getLogger(__name__)

REPAIR_INSTRUCTIONS = ("The previous query (failed_sql) failed in DuckDB with the error shown (error). "
                       "Write a corrected query.")


def result_key(result: Any) -> tuple | None:
    """What two queries must share to count as the same answer: the column count and the rows as
    a multiset (floats rounded). None for a failed query."""
    if result is None or not result.ok:
        return None

    def norm(value: Any) -> Any:
        return round(float(value), 6) if isinstance(value, Decimal | float) else value

    rows = Counter(tuple(norm(v) for v in row) for row in result.rows)
    return len(result.columns), tuple(sorted(rows.items(), key=repr))


def majority(results: Sequence[Any]) -> int | None:
    """Index of the candidate whose result set most candidates share (ties: the earliest); None
    when every candidate failed."""
    keys = [result_key(r) for r in results]
    counts = Counter(k for k in keys if k is not None)
    if not counts:
        return None
    best = max(counts.values())
    return next(i for i, k in enumerate(keys) if k is not None and counts[k] == best)


def repair_signature(signature: Any) -> Any:
    """``signature`` with two more inputs, the failed query and DuckDB's error, and a note."""
    repaired = signature.append("failed_sql", dspy.InputField(desc="a query that failed"), type_=str)
    repaired = repaired.append("error", dspy.InputField(desc="DuckDB's error for it"), type_=str)
    return repaired.with_instructions(f"{signature.instructions}\n\n{REPAIR_INSTRUCTIONS}")


def generate_sql(node: Any, kwargs: dict[str, Any], predict: Callable[..., dspy.Prediction]) -> dspy.Prediction:
    """One CodeGen call with its settings (see the module docstring).

    Args:
        node: The ``CodeGen`` node (its settings, database, signature).
        kwargs: The call's inputs (and ``demos`` when retrieved).
        predict: One plain LM call of the node: ``predict(**kwargs) -> Prediction``.
    """
    from programs.sqlexec import run_readonly

    output = node.output_field
    kwargs = dict(kwargs)
    if node.schema_linking and node.database and node.schema_field in node.signature.input_fields:
        from programs.sql_linking import database_schema, database_values, link_schema, linked_schema_text

        question = " ".join(str(v) for k, v in kwargs.items()
                            if k in node.signature.input_fields and k != node.schema_field)
        linked = link_schema(question, database_schema(node.database), database_values(node.database))
        kwargs[node.schema_field] = linked_schema_text(linked)
    context: dict[str, Any] = {"trace": None}  # the chosen query alone goes into DSPy's trace, below
    if node.grammar and node.database and isinstance(dspy.settings.adapter, dspy.JSONAdapter | type(None)):
        from programs.sql_grammar import grammar_adapter, sql_pattern
        from programs.sql_linking import database_schema, text_is_lowercase

        pattern = sql_pattern(database_schema(node.database), lowercase_literals=text_is_lowercase(node.database))
        context["adapter"] = grammar_adapter({output: pattern})
    trace = dspy.settings.trace
    with dspy.context(**context):
        candidates = [predict(**kwargs)]
        seeded = "seed" in (getattr(dspy.settings.lm, "supported_params", None) or ())
        for i in range(1, max(1, int(node.samples))):
            # rollout_id keeps DSPy's cache from serving sample i the answer of sample 1.
            config = {**kwargs.get("config", {}), "temperature": float(node.sample_temperature), "rollout_id": i,
                      **({"seed": i} if seeded else {})}
            try:
                candidates.append(predict(**{**kwargs, "config": config}))
            except (ValueError, dspy.utils.exceptions.AdapterParseError) as exc:  # a sample that did not parse
                logger.debug("self-consistency sample %d failed: %s", i, exc)
        needs_results = node.repair or len(candidates) > 1
        results = [run_readonly(node.database, str(c.get(output) or ""), max_rows=1000) if needs_results
                   and node.database else None for c in candidates]
        chosen = 0 if len(candidates) == 1 else majority(results)
        if chosen is None:
            chosen = 0
        failed = results[chosen] is not None and not results[chosen].ok
        if node.repair and failed:
            inputs = {k: v for k, v in kwargs.items() if k not in ("config", "signature")}
            repaired = predict(**inputs, signature=repair_signature(kwargs.get("signature", node.signature)),
                               failed_sql=str(candidates[chosen].get(output) or ""), error=results[chosen].error)
            candidates.append(dspy.Prediction(**{output: repaired.get(output)}))
            chosen = len(candidates) - 1
    prediction = candidates[chosen]
    if trace is not None:
        trace.append((node, {k: v for k, v in kwargs.items() if k in node.signature.input_fields}, prediction))
    return prediction
