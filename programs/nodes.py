"""Node kinds: the steps of a pipeline.

A node is a ``dspy.Predict`` that also carries its kind, its rule settings and any extra
validators. Being a predictor itself (not a module that wraps one), a node's name in a pipeline
is exactly its attribute name, the same name ``named_predictors()`` reports, so demos and
instructions that optimizers write land on the node a user declared.

Example:
    >>> classify = Classifier("message", output="category", labels=["billing", "refund"])
    >>> classify.kind, classify.output_field, classify.labels
    ('classifier', 'category', ('billing', 'refund'))
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, ClassVar, Literal

import dspy

from programs.demo_pool import LivePool
from programs.errors import PipelineError
from programs.label_narrowing import MODES, classify, default_instructions
from programs.query_prompt import QueryPrompt
from programs.retrieval import Retrieval
from programs.sql_steps import generate_sql
from programs.trace import record_node_call

__all__ = ["Classifier", "CodeGen", "Node", "Writer"]

InputSpec = str | Sequence[str] | Mapping[str, str]


def _input_fields(inputs: InputSpec) -> dict[str, str]:
    """Normalises an input declaration to ``{name: description}``."""
    if isinstance(inputs, str):
        names = [part.strip() for part in inputs.split(",") if part.strip()]
        return dict.fromkeys(names, "")
    if isinstance(inputs, Mapping):
        return {str(k): str(v) for k, v in inputs.items()}
    return {str(name): "" for name in inputs}


def _signature(inputs: InputSpec, output: str, annotation: Any, instructions: str,
               output_desc: str) -> type[dspy.Signature]:
    fields: dict[str, tuple[Any, Any]] = {}
    for name in [*_input_fields(inputs), output]:
        if hasattr(dspy.Signature, name):  # pydantic would warn, and the field would shadow a method
            raise PipelineError(f"field name {name!r} clashes with an attribute of dspy.Signature; rename it "
                                f"(for example {name}_text)")
    for name, desc in _input_fields(inputs).items():
        if not name.isidentifier():
            raise PipelineError(f"input field name {name!r} is not a Python identifier")
        fields[name] = (str, dspy.InputField(desc=desc) if desc else dspy.InputField())
    if not fields:
        raise PipelineError("a node needs at least one input field")
    if not output.isidentifier() or output in fields:
        raise PipelineError(f"output field name {output!r} must be an identifier distinct from the inputs")
    fields[output] = (annotation, dspy.OutputField(desc=output_desc) if output_desc else dspy.OutputField())
    return dspy.Signature(fields, instructions)


class Node(dspy.Predict):
    """A pipeline step: one predictor with one output field, a kind, and its checks.

    Args:
        signature: The DSPy signature of the step (exactly one output field).
        rules: Settings of the kind's built-in validators (for example ``max_words``).
        validators: Extra validators, each called as ``validator(output, gold=..., example=...,
            prediction=..., node=...)`` and returning a ``metrics.Verdict``.

    Attributes:
        retrieval: When set (by ``--optimizer knn``), each call takes its demos from this pool,
            the nearest to the call's inputs, instead of ``demos``; still one LM call.
        live_pool: When set (at run time, by a recorder: ``programs.demo_pool``), reviewed node
            calls from the flywheel store compete for the demos too, read incrementally before
            each call. Not saved with the program.
        query_prompt: When set (by ``--optimizer query-aware``), a prompt writer first writes an
            instruction for each call's inputs (``programs.query_prompt``): two LM calls per call.
    """

    kind: ClassVar[str] = "node"
    settings: ClassVar[tuple[str, ...]] = ()  # node settings saved with the program's state
    retrieval: Retrieval | None
    live_pool: LivePool | None = None

    def __init__(self, signature: type[dspy.Signature], *, rules: Mapping[str, Any] | None = None,
                 validators: Iterable[Callable[..., Any]] = (), **config: Any):
        super().__init__(signature, **config)
        if len(self.signature.output_fields) != 1:
            raise PipelineError(f"a {self.kind} node has exactly one output field, "
                                f"got {list(self.signature.output_fields)}")
        self.rules = dict(rules or {})
        self.validators = list(validators)

    def reset(self) -> None:
        super().reset()
        self.retrieval = None  # compiled state, like demos: a reset program starts without it
        self.query_prompt: QueryPrompt | None = None

    def forward(self, **kwargs: Any) -> dspy.Prediction:
        kwargs = self._query_instruction(self._retrieve(kwargs))
        # Recorded as one node call (inputs, output, demos, latency, tokens, error) when a capture
        # is in force (programs.trace); otherwise just the prediction.
        return record_node_call(self, kwargs, lambda: self._predict(kwargs))

    async def aforward(self, **kwargs: Any) -> dspy.Prediction:
        return await super().aforward(**self._query_instruction(self._retrieve(kwargs)))

    def _query_instruction(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """With a query prompt: the node's instruction plus the one written for these inputs."""
        if self.query_prompt is None or "signature" in kwargs:
            return kwargs
        written = self.query_prompt.write({f: kwargs[f] for f in self.input_fields if f in kwargs})
        if not written:
            return kwargs
        instructions = f"{self.signature.instructions}\n\n{written}"
        return {**kwargs, "signature": self.signature.with_instructions(instructions)}

    def _predict(self, kwargs: dict[str, Any]) -> dspy.Prediction:
        """The node's prediction for one call: one LM call here; a kind may add steps (a vote,
        a repair), all inside this one node call so it is recorded whole."""
        return super().forward(**kwargs)

    def _retrieve(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        if "demos" in kwargs:  # demos passed by the caller win
            return kwargs
        if self.live_pool is not None:
            return {**kwargs, "demos": self.live_pool.select(kwargs, base=self.retrieval, fixed=self.demos)}
        if self.retrieval is None:
            return kwargs
        return {**kwargs, "demos": self.retrieval.select(kwargs)}

    def dump_state(self, json_mode: bool = True) -> dict[str, Any]:
        state = super().dump_state(json_mode=json_mode)
        if self.retrieval is not None:
            state["retrieval"] = self.retrieval.dump()
        if self.settings:
            state["settings"] = {name: getattr(self, name) for name in self.settings}
        if self.query_prompt is not None:
            state["query_prompt"] = self.query_prompt.dump()
        return state

    def load_state(self, state: dict[str, Any], **kwargs: Any) -> Node:
        state = dict(state)
        retrieval = state.pop("retrieval", None)  # Predict.load_state would set it raw
        for name, value in (state.pop("settings", None) or {}).items():
            if name in self.settings:
                setattr(self, name, value)
        query_prompt = state.pop("query_prompt", None)
        super().load_state(state, **kwargs)
        self.retrieval = Retrieval.load(retrieval) if retrieval else None
        self.query_prompt = QueryPrompt.load(query_prompt) if query_prompt else None
        return self

    @property
    def output_field(self) -> str:
        """The name of the node's one output field."""
        return next(iter(self.signature.output_fields))

    @property
    def input_fields(self) -> tuple[str, ...]:
        """The names of the node's input fields, in order."""
        return tuple(self.signature.input_fields)


class Classifier(Node):
    """Chooses one label from a closed set; the output type is the set itself.

    The output field is typed ``Literal[labels]``, so JSON-schema constrained decoding can only
    produce a valid label, and parsing rejects anything else.

    Args:
        inputs: Input field names (``"a, b"``, a list, or ``{name: description}``).
        output: The output field name.
        labels: The closed label set, in a stable order.
        instructions: The task instruction optimizers start from.
        mode: ``lm`` (one LM call, the default) or ``vote``: the similarity-weighted label vote of
            the retrieval's ``k`` nearest pool examples, no LM call (needs ``--optimizer knn``).
        narrow: With a retrieval, offer the LM only the labels of the nearest pool examples, at
            most this many, most voted first: the call's output type becomes ``Literal`` of
            those, and the demos are the neighbours that carry them. When they agree on one
            label no LM call is made. None (default): all labels.
        confident: With ``narrow``, no LM call either when the top label holds at least this
            share of the neighbours' vote weight (None: only when they agree).
        label_descriptions: ``{label: text}``, a line per label in the instructions (for a
            narrowed call, only its labels').

    See ``programs.label_narrowing``.
    """

    kind: ClassVar[str] = "classifier"

    settings: ClassVar[tuple[str, ...]] = ("mode", "narrow", "confident", "label_descriptions")

    def __init__(self, inputs: InputSpec, *, output: str = "label", labels: Sequence[str],
                 instructions: str = "", mode: str = "lm", narrow: int | None = None,
                 confident: float | None = None, label_descriptions: Mapping[str, str] | None = None, **kwargs: Any):
        labels = tuple(dict.fromkeys(str(label) for label in labels))
        if len(labels) < 2:
            raise PipelineError(f"a classifier needs at least two labels, got {list(labels)}")
        if mode not in MODES:
            raise PipelineError(f"unknown classifier mode {mode!r}: choose one of {', '.join(MODES)}")
        if narrow is not None and (isinstance(narrow, bool) or not isinstance(narrow, int) or narrow < 1):
            raise PipelineError(f"narrow must be a whole number >= 1 (or None), got {narrow!r}")
        if confident is not None and not 0 < float(confident) <= 1:
            raise PipelineError(f"confident must be a share of the vote in (0, 1], got {confident!r}")
        unknown = sorted(set(label_descriptions or {}) - set(labels))
        if unknown:
            raise PipelineError(f"label_descriptions names unknown label(s) {unknown}; labels are {list(labels)}")
        instructions = instructions or default_instructions(labels)
        signature = _signature(inputs, output, Literal[labels], instructions, "one of the labels")
        super().__init__(signature, **kwargs)
        self.labels = labels
        self.mode, self.narrow, self.confident = mode, narrow, confident
        self.label_descriptions = dict(label_descriptions) if label_descriptions else None

    def _predict(self, kwargs: dict[str, Any]) -> dspy.Prediction:
        return classify(self, kwargs, lambda **kw: Node._predict(self, kw))


class Writer(Node):
    """Writes free text.

    Args:
        inputs: Input field names.
        output: The output field name.
        instructions: The task instruction optimizers start from.
        rules: Rule settings for the writer's validators, e.g. ``{"min_words": 3, "max_words": 60}``.
    """

    kind: ClassVar[str] = "writer"

    def __init__(self, inputs: InputSpec, *, output: str = "text", instructions: str = "",
                 output_desc: str = "", rules: Mapping[str, Any] | None = None, **config: Any):
        instructions = instructions or "Write the requested text."
        rules = dict(rules or {})
        if "max_tokens" not in config and rules.get("max_words"):
            # A word limit bounds generation too: a rambling small model otherwise runs to the LM's
            # max_tokens on every call. Three tokens a word leaves room for non-English scripts.
            config["max_tokens"] = 3 * int(rules["max_words"]) + 32
        super().__init__(_signature(inputs, output, str, instructions, output_desc), rules=rules, **config)


class CodeGen(Node):
    """Writes code to be executed; SQL for DuckDB first.

    Args:
        inputs: Input field names (the question, usually a schema too).
        output: The output field name.
        dialect: The SQL dialect the code is written in.
        database: Path of the DuckDB database the code runs against (read-only).
        instructions: The task instruction optimizers start from.
        schema_linking: Replace the ``schema_field`` input by the part of the database the
            question needs, with value and join hints (0 extra LM calls).
        schema_field: The input field that holds the schema (``db_schema``).
        grammar: Decode the SQL under a token pattern from the schema, so only real table and
            column names, keywords, literals and operators can be generated (LMs that honour a
            JSON-schema ``pattern``: the embedded llama.cpp model); 0 extra LM calls.
        repair: Send a query that fails in DuckDB back once with the error (+1 LM call, for
            failing queries only).
        samples: Self-consistency by execution: this many queries (the first at the node's
            temperature, the rest at ``sample_temperature``); the result set most of them
            return wins (``samples - 1`` extra LM calls).
        sample_temperature: The temperature of the extra samples.

    See ``programs.sql_steps``.
    """

    kind: ClassVar[str] = "codegen"

    settings: ClassVar[tuple[str, ...]] = ("schema_linking", "schema_field", "grammar", "repair", "samples",
                                           "sample_temperature")

    def __init__(self, inputs: InputSpec, *, output: str = "sql", dialect: str = "duckdb",
                 database: str | None = None, instructions: str = "", schema_linking: bool = False,
                 schema_field: str = "db_schema", grammar: bool = False, repair: bool = False, samples: int = 1,
                 sample_temperature: float = 0.7, **kwargs: Any):
        if dialect != "duckdb":
            raise PipelineError(f"CodeGen supports dialect 'duckdb', got {dialect!r}")
        if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
            raise PipelineError(f"samples must be a whole number >= 1, got {samples!r}")
        if not 0 < float(sample_temperature) <= 2:
            raise PipelineError(f"sample_temperature must be in (0, 2], got {sample_temperature!r}")
        if (schema_linking or grammar or repair or samples > 1) and not database:
            raise PipelineError("schema_linking, grammar, repair and samples read the database: "
                                "pass database='path/to.duckdb' to the CodeGen node")
        instructions = instructions or "Write one DuckDB SQL SELECT query that answers the question."
        kwargs.setdefault("max_tokens", 200)  # one query; a runaway generation is cut early
        signature = _signature(inputs, output, str, instructions, "a single read-only DuckDB SELECT query")
        super().__init__(signature, **kwargs)
        self.dialect = dialect
        self.database = database
        self.schema_linking, self.schema_field, self.grammar = schema_linking, schema_field, grammar
        self.repair, self.samples, self.sample_temperature = repair, samples, float(sample_temperature)

    def _predict(self, kwargs: dict[str, Any]) -> dspy.Prediction:
        if not (self.schema_linking or self.grammar or self.repair or self.samples > 1) or not self.database:
            return super()._predict(kwargs)
        return generate_sql(self, kwargs, lambda **kw: Node._predict(self, kw))
