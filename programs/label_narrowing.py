"""Classifier calls that use their retrieval fully: a neighbour vote, and labels narrowed to it.

A classifier with a ``Retrieval`` (``--optimizer knn``) already finds, for each call, the pool
examples nearest its inputs. Their labels say more than "these are good demos":

- **vote** (``mode="vote"``): the label with the highest similarity-weighted vote among the
  ``k`` nearest pool examples (the retrieval's ``k``) is the answer, with no LM call at all.
- **narrowing** (``narrow=N``): the call's output type becomes ``Literal[...]`` of at most
  ``N`` labels, those of the nearest pool examples ordered by their vote, so constrained
  decoding chooses among a few plausible labels instead of all of them, and the prompt lists
  only those. The demos are the neighbours that carry one of those labels. When the neighbours
  agree on one label there is nothing left to choose, and no LM call is made; with
  ``confident=S`` neither is one made when the top label holds at least the share S of the vote.
- **label descriptions** (``label_descriptions={label: text}``): a line per label in the
  instructions, for the labels the call can answer.

Everything here is a pure function of the node's settings, its retrieval and the call's inputs;
``programs.nodes.Classifier`` applies the result inside its own ``forward``.

Example:
    >>> pool = [{"text": "card never came", "label": "card_arrival"},
    ...         {"text": "card still not here", "label": "card_arrival"},
    ...         {"text": "what rate do you use", "label": "exchange_rate"}]
    >>> r = Retrieval.build(pool, query_fields=("text",), label_field="label", k=3)
    >>> plan_call(r, {"text": "my card has not come"}, labels=("card_arrival", "exchange_rate"),
    ...           narrow=2).labels
    ('card_arrival', 'exchange_rate')
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from programs.errors import PipelineError
from programs.retrieval import Retrieval, query_text

__all__ = ["MODES", "CallPlan", "classify", "default_instructions", "described_instructions", "label_votes",
           "narrowed_signature", "plan_call"]

MODES = ("lm", "vote")
"""Classifier modes: ``lm`` (one LM call, the default) or ``vote`` (the neighbour vote, no LM call)."""


@dataclass(frozen=True)
class CallPlan:
    """What one classifier call does.

    Attributes:
        labels: The labels the call may answer, most voted first (all labels when not narrowed).
        votes: ``(label, weight)`` of the neighbours' labels, highest first.
        demos: The demos to show, in the retrieval's order (None: the node's own demos).
        answer: The label decided without an LM call (vote mode, or one candidate left), else None.
    """

    labels: tuple[str, ...]
    votes: tuple[tuple[str, float], ...]
    demos: list[dict[str, Any]] | None
    answer: str | None = None


def label_votes(retrieval: Retrieval, hits: Sequence[int], scores: np.ndarray) -> list[tuple[str, float]]:
    """Similarity-weighted votes of the pool examples ``hits`` (most similar first).

    Each neighbour adds its cosine similarity (at least a tiny positive amount) to its label; a
    tie goes to the label of the nearer neighbour.
    """
    if retrieval.label_field is None:
        raise PipelineError("label narrowing and vote mode need a classifier retrieval (a label_field); "
                            "compile with --optimizer knn")
    weights: dict[str, float] = {}
    for i in hits:
        label = str(retrieval.demos[i].get(retrieval.label_field))
        weights[label] = weights.get(label, 0.0) + max(float(scores[i]), 1e-6)
    first = {label: n for n, label in enumerate(dict.fromkeys(
        str(retrieval.demos[i].get(retrieval.label_field)) for i in hits))}
    return sorted(weights.items(), key=lambda item: (-item[1], first[item[0]]))


def plan_call(retrieval: Retrieval, inputs: Mapping[str, Any], *, labels: Sequence[str], mode: str = "lm",
              narrow: int | None = None, demos: Sequence[Mapping[str, Any]] | None = None,
              confident: float | None = None) -> CallPlan:
    """The plan of one classifier call with ``inputs`` (see the module docstring).

    Args:
        retrieval: The node's retrieval; its ``k`` nearest pool examples vote.
        inputs: The call's input values.
        labels: The node's full label set; votes for labels outside it are ignored.
        mode: ``lm`` or ``vote``.
        narrow: Narrow the call's labels to at most this many (None: no narrowing).
        demos: The demos already chosen for the call (by default the retrieval's own choice);
            narrowing keeps those whose label is still a candidate.
        confident: With narrowing, answer with the top label, without an LM call, when it holds
            at least this share of the vote weight (None: only when the neighbours agree).
    """
    if mode not in MODES:
        raise PipelineError(f"unknown classifier mode {mode!r}: choose one of {', '.join(MODES)}")
    if narrow is not None and int(narrow) < 1:
        raise PipelineError(f"narrow must be at least 1, got {narrow}")
    query = retrieval.embed([query_text(inputs, retrieval.query_fields)])[0]
    scores = retrieval.vectors @ query
    voters = retrieval.with_settings(max_per_label=None).nearest(query)
    known = set(labels)
    votes = tuple((label, w) for label, w in label_votes(retrieval, voters, scores) if label in known)
    if mode == "vote":
        return CallPlan(tuple(labels), votes, None, votes[0][0] if votes else labels[0])
    if demos is None:
        indices = retrieval.nearest(query)
        if retrieval.order == "nearest_last":
            indices.reverse()
        demos = [retrieval.demos[i] for i in indices]
    if narrow is None or not votes:
        return CallPlan(tuple(labels), votes, [dict(d) for d in demos])
    narrowed = tuple(label for label, _ in votes[: int(narrow)])
    kept = [dict(d) for d in demos if str(d.get(retrieval.label_field)) in narrowed]
    share = votes[0][1] / sum(w for _, w in votes)
    decided = len(narrowed) == 1 or (confident is not None and share >= confident)
    return CallPlan(narrowed, votes, kept, narrowed[0] if decided else None)


def classify(node: Any, kwargs: dict[str, Any], predict: Callable[..., Any]) -> Any:
    """One call of a classifier ``node`` with its retrieval settings (``mode``, ``narrow``,
    ``label_descriptions``); ``predict(**kwargs)`` is the node's plain LM call.

    A call answered without the LM (vote mode, or one candidate left) still goes into DSPy's
    trace, like any prediction of the node, so bootstrapping and tracking see it.
    """
    import dspy

    output = node.output_field
    labels = node.labels
    if node.retrieval is not None and (node.mode == "vote" or node.narrow is not None):
        inputs = {k: v for k, v in kwargs.items() if k in node.signature.input_fields}
        plan = plan_call(node.retrieval, inputs, labels=labels, mode=node.mode, narrow=node.narrow,
                         demos=kwargs.get("demos"), confident=getattr(node, "confident", None))
        if plan.answer is not None:
            prediction = dspy.Prediction(**{output: plan.answer})
            if dspy.settings.trace is not None:
                dspy.settings.trace.append((node, inputs, prediction))
            return prediction
        labels = plan.labels
        kwargs = {**kwargs, "demos": plan.demos}
    elif node.mode == "vote":
        raise PipelineError(f"classifier mode 'vote' needs a retrieval pool: compile with --optimizer knn "
                            f"(node {output!r} has none)")
    if tuple(labels) == tuple(node.labels) and not node.label_descriptions:
        return predict(**kwargs)
    kwargs = dict(kwargs)
    signature = kwargs.pop("signature", node.signature)  # a per-call instruction (query prompt) is kept
    instructions = signature.instructions
    if instructions.startswith(default_instructions(node.labels)):
        instructions = default_instructions(labels) + instructions[len(default_instructions(node.labels)):]
    instructions = described_instructions(instructions, labels, node.label_descriptions)
    return predict(**kwargs, signature=narrowed_signature(signature, output, labels, instructions))


def default_instructions(labels: Sequence[str]) -> str:
    """The instruction a classifier gets when none is given."""
    return f"Classify the input into exactly one of: {', '.join(labels)}."


def described_instructions(instructions: str, labels: Sequence[str], descriptions: Mapping[str, str] | None) -> str:
    """``instructions`` followed by one ``- label: description`` line per described label in ``labels``."""
    if not descriptions:
        return instructions
    lines = [f"- {label}: {descriptions[label]}" for label in labels if descriptions.get(label)]
    return f"{instructions}\n\nLabels:\n" + "\n".join(lines) if lines else instructions


def narrowed_signature(signature: Any, output: str, labels: Sequence[str], instructions: str) -> Any:
    """``signature`` with its output typed ``Literal[labels]`` and the given instructions."""
    narrowed = signature.with_updated_fields(output, type_=Literal[tuple(labels)])
    return narrowed.with_instructions(instructions)
