"""The Pipeline base: a ``dspy.Module`` of named nodes whose ``forward`` is the graph.

A pipeline declares its input fields and, per node, which Example field holds that node's gold
output. The graph itself is plain Python in ``forward``, as DSPy intends.

Example:
    >>> import dspy
    >>> from programs import Classifier, Pipeline, Writer
    >>> class Triage(Pipeline):
    ...     inputs = ("message",)
    ...     gold = {"classify": "category"}
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.classify = Classifier("message", output="category", labels=["a", "b"])
    ...     def forward(self, message):
    ...         return dspy.Prediction(category=self.classify(message=message).category)
    >>> list(Triage().nodes())
    ['classify']
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import dspy

from programs.errors import PipelineError
from programs.nodes import Node
from programs.trace import attach, capture

__all__ = ["Pipeline"]


class Pipeline(dspy.Module):
    """Base class of every pipec pipeline.

    Class attributes:
        inputs: The Example fields passed to ``forward`` as keyword arguments.
        gold: ``{node name: Example field}`` for the nodes whose output has a gold value.
        weights: Optional ``{node name: weight}`` for the pipeline score (default 1 each).
    """

    inputs: ClassVar[tuple[str, ...]] = ()
    gold: ClassVar[Mapping[str, str]] = {}
    weights: ClassVar[Mapping[str, float]] = {}

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Runs the pipeline; the Prediction carries what each node produced
        (``programs.trace.node_calls``), which validators judge instead of its fields."""
        with capture(self) as calls:
            prediction = super().__call__(*args, **kwargs)
        # DSPy's bootstrap_trace_data (GEPA's traced minibatches) patches forward to return
        # (prediction, trace) and calls the metric without the trace: the calls go on the prediction.
        if isinstance(prediction, tuple) and len(prediction) == 2 and isinstance(prediction[1], list):
            attach(prediction[0], calls)
        else:
            attach(prediction, calls)
        return prediction

    def nodes(self) -> dict[str, Node]:
        """The pipeline's nodes by name, in declaration order."""
        return {name: p for name, p in self.named_predictors() if isinstance(p, Node)}

    def check_declaration(self) -> None:
        """Raises ``PipelineError`` when the declaration does not hold together."""
        cls = type(self).__name__
        nodes = self.nodes()
        if not nodes:
            raise PipelineError(f"{cls} declares no nodes: assign Classifier/Writer/CodeGen "
                                "instances to attributes in __init__")
        if not self.inputs:
            raise PipelineError(f"{cls} declares no inputs: set the class attribute inputs = ('field', ...)")
        for mapping_name, mapping in (("gold", self.gold), ("weights", self.weights)):
            unknown = sorted(set(mapping) - set(nodes))
            if unknown:
                raise PipelineError(f"{cls}.{mapping_name} names unknown node(s) {unknown}; "
                                    f"nodes are {sorted(nodes)}")
        for name, weight in self.weights.items():
            if not weight >= 0:
                raise PipelineError(f"{cls}.weights[{name!r}] must be >= 0, got {weight!r}")

    def required_fields(self) -> tuple[str, ...]:
        """Every Example field a dataset must hold for this pipeline: inputs, then gold fields."""
        return tuple(dict.fromkeys([*self.inputs, *self.gold.values()]))

    def weight(self, node: str) -> float:
        """The weight of ``node`` in the pipeline score."""
        return float(self.weights.get(node, 1.0))
