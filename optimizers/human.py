"""The manual feedback loop: a person's notes -> the LM rewrites -> the person accepts or rejects.

Notes say what is wrong. They come from a file (``--param notes=path``), from stdin
(``notes=-``), or from reviews in the flywheel store, handed in as ``reviews``: a callable that
returns rows with ``node``, ``comment`` and ``passed`` (the ``labels`` table's columns), so this
module never touches the store itself. A note line ``node: text`` is for that node; other lines
are for the node whose validators fail most.

Each round, for each node with notes, the prompt-writing LM rewrites the node's instruction from
the notes and the node's failing valset examples; the person sees the diff and accepts or rejects
it (asked on the terminal; ``--param accept=all`` or ``accept=none`` when there is none). An
accepted rewrite is scored on the valset sample and, like every optimizer here, kept only when it
does not score below the program it replaces. Every round is in ``rounds_log`` (notes, diff,
decision, score), recorded with the run.

LM calls: per round and node, 1 rewrite + val_size x nodes when accepted.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import dspy

from optimizers.textual import TextualOptimizer, clean_instruction, instruction_diff
from programs.errors import ConfigError

__all__ = ["HumanFeedback", "parse_notes"]

ACCEPT = ("ask", "all", "none")


class HumanRewrite(dspy.Signature):
    """You improve the instruction of one step of an LLM pipeline. A person reviewed its outputs and wrote the
    notes below. Rewrite the instruction so that it does what the notes ask, and keep what already works."""

    task: str = dspy.InputField(desc="the step the instruction is for")
    current_instruction: str = dspy.InputField()
    reviewer_notes: str = dspy.InputField(desc="what the person says is wrong or wanted")
    failing_examples: str = dspy.InputField(desc="examples the step currently gets wrong")
    new_instruction: str = dspy.OutputField(desc="the rewritten instruction, complete and self-contained")


def parse_notes(text: str, nodes: Iterable[str]) -> dict[str | None, list[str]]:
    """Notes by node: ``node: text`` lines go to that node, other non-empty lines to None."""
    names = set(nodes)
    found: dict[str | None, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        head, sep, rest = line.partition(":")
        if sep and head.strip() in names and rest.strip():
            found.setdefault(head.strip(), []).append(rest.strip())
        else:
            found.setdefault(None, []).append(line)
    return found


def _terminal_accept(diff: str) -> bool:
    sys.stderr.write(diff + "\nAccept this rewrite? [y/N] ")
    sys.stderr.flush()
    return sys.stdin.readline().strip().lower() in ("y", "yes")


class HumanFeedback(TextualOptimizer):
    """Rewrites from a person's notes, each accepted or rejected by the person.

    Args:
        notes: A notes file, ``-`` for stdin, or None when ``reviews`` gives them.
        accept: ``ask`` (on the terminal), ``all`` or ``none``.
        rounds: Rounds; with notes from a terminal, each round after the first asks for new notes.
        reviews: A callable returning review rows (``node``, ``comment``, ``passed``), e.g. the
            flywheel store's labels.
        decide: Overrides how a diff is accepted: ``decide(diff) -> bool`` (tests, UIs).
        **common: See ``TextualOptimizer``.

    Raises:
        ConfigError: No source of notes, an unreadable notes file, or ``accept=ask`` without a terminal.
    """

    method = "human"

    def __init__(self, metric: Any = None, *, notes: str | None = None, accept: str = "ask", rounds: int = 1,
                 reviews: Callable[[], Iterable[Mapping[str, Any]]] | None = None,
                 decide: Callable[[str], bool] | None = None, **common: Any) -> None:
        super().__init__(metric, **common)
        if accept not in ACCEPT:
            raise ConfigError(f"--param accept={accept!r}: choose one of {', '.join(ACCEPT)}")
        if notes is None and reviews is None:
            raise ConfigError("--optimizer human needs notes: --param notes=path/to/notes.txt (or notes=- to read "
                              "them from stdin)")
        if notes not in (None, "-") and not Path(str(notes)).is_file():
            raise ConfigError(f"--param notes={notes}: no such file; write one note per line ('node: note' for a "
                              "particular node)")
        if accept == "ask" and decide is None and not (sys.stdin.isatty() and notes != "-"):
            raise ConfigError("--optimizer human asks before keeping each rewrite, which needs a terminal (and "
                              "notes not on stdin): pass --param accept=all or --param accept=none")
        self.notes_source, self.accept, self.rounds = notes, accept, max(1, int(rounds))
        self.reviews, self.decide = reviews, decide
        self.rounds_log: list[dict[str, Any]] = []

    def _read_notes(self, round_: int) -> str:
        if self.notes_source == "-":
            return sys.stdin.read() if round_ == 1 else ""
        if self.notes_source is not None:
            if round_ == 1:
                return Path(str(self.notes_source)).read_text(encoding="utf-8")
            if self.accept == "ask" and self.decide is None:
                sys.stderr.write(f"Notes for round {round_} (end with an empty line):\n")
                lines = []
                for line in iter(sys.stdin.readline, ""):
                    if not line.strip():
                        break
                    lines.append(line)
                return "".join(lines)
            return ""
        return ""

    def _review_notes(self) -> str:
        if self.reviews is None:
            return ""
        lines = []
        for row in self.reviews():
            comment = str(row.get("comment") or "").strip()
            if comment and row.get("passed") is not True:
                node = row.get("node")
                lines.append(f"{node}: {comment}" if node else comment)
        return "\n".join(lines)

    def _accepts(self, diff: str) -> bool:
        if self.decide is not None:
            return bool(self.decide(diff))
        if self.accept != "ask":
            return self.accept == "all"
        return _terminal_accept(diff)

    def search(self) -> None:
        for round_ in range(1, self.rounds + 1):
            text = "\n".join(t for t in (self._read_notes(round_), self._review_notes() if round_ == 1 else "") if t)
            by_node = parse_notes(text, self.node_names)
            if not by_node:
                break
            general = by_node.pop(None, [])
            order = self.attribution()
            if general:
                by_node.setdefault(order[0], []).extend(general)
            for node in [n for n in order if n in by_node]:
                current = self.best
                notes = "\n".join(f"- {note}" for note in by_node[node])
                failing = self.describe_failures(node, self.last_evaluation.failures(node), limit=3)
                answer = self.ask(HumanRewrite, task=self.task_description(node),
                                  current_instruction=current.instructions[node], reviewer_notes=notes,
                                  failing_examples=failing)
                after = clean_instruction(answer.new_instruction if answer is not None else None)
                entry: dict[str, Any] = {"round": round_, "node": node, "notes": by_node[node],
                                         "before": current.instructions[node], "after": after, "accepted": False,
                                         "score": None}
                self.rounds_log.append(entry)
                if not after or after == current.instructions[node]:
                    entry["diff"] = "(the LM proposed no usable change)"
                    continue
                entry["diff"] = instruction_diff(current.instructions[node], after, node)
                entry["accepted"] = self._accepts(entry["diff"])
                if entry["accepted"]:
                    candidate = self.candidate(current, node, after, origin="human notes", step=round_)
                    entry["score"] = self.score(candidate)
                    entry["kept"] = self.best is candidate

    def report(self) -> dict[str, Any]:
        return {"rounds": [{k: v for k, v in r.items() if k not in ("before", "after")} for r in self.rounds_log]}
