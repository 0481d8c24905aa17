"""The manual feedback loop: a person's notes -> the LM rewrites -> the person accepts or rejects.

Notes say what is wrong. They come from one of:

- a file (``--param notes=path``) or stdin (``notes=-``): a line ``node: text`` is for that
  node, any other line for the node whose validators fail most;
- the flywheel store (``notes=store:``): what people wrote in ``pipec review`` about the nodes
  being rewritten, newest first, at most ``limit`` per node (default 20):

  * the comment of each failing label (the latest label of each reviewer, rubric and node call
    only: a comment a reviewer later took back by passing the call is not a note), and
  * each corrected output (the latest correction of a node call): the node's input, what it
    wrote and what the reviewer corrected it to, with the correction's comment when it has one.

  Options after the colon, comma-separated: ``store:limit=10,pipeline=triage,reviewer=alice``
  (``pipeline`` as the traces were recorded, e.g. ``triage`` or ``path/to/file.py:Class``). The
  store is ``--param store=PATH``, else the ``store`` the caller gave ``prepare_optimizer``, else
  ``$PIPEC_STORE``, else ``$PIPEC_HOME/store.duckdb`` (``experiments.store.default_store_path``);
  it is read, never written;
- ``reviews``, for programs that hold their reviews elsewhere: a callable returning rows with
  ``node``, ``comment`` and ``passed``.

Each round, for each node with notes, the prompt-writing LM rewrites the node's instruction from
the notes and the node's failing valset examples; the person sees the diff and accepts or rejects
it (asked on the terminal). Without a person (a benchmark, CI), ``--param accept=all`` keeps every
proposed diff that scores no worse and ``accept=none`` only records them; the default, ``ask``,
refuses to start without a terminal. An accepted rewrite is scored on the valset sample and, like
every optimizer here, kept only when it does not score below the program it replaces. Every round
is in ``rounds_log`` (notes, diff, decision, score), recorded with the run.

LM calls: per round and node, 1 rewrite + val_size x nodes when accepted.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dspy

from optimizers.textual import TextualOptimizer, clean_instruction, instruction_diff
from programs.errors import ConfigError

__all__ = ["HumanFeedback", "StoreNotes", "parse_notes", "parse_store_notes", "store_notes"]

logger = logging.getLogger(__name__)

ACCEPT = ("ask", "all", "none")
STORE = "store:"
DEFAULT_STORE_LIMIT = 20  # notes per node from the store
_PREVIEW = 160  # characters of a node's input or output quoted in a store note


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


@dataclass(frozen=True)
class StoreNotes:
    """Which store rows are notes: ``notes=store:limit=N,pipeline=NAME,reviewer=NAME``."""

    limit: int = DEFAULT_STORE_LIMIT
    pipeline: str | None = None
    reviewer: str | None = None

    def describe(self) -> str:
        parts = [f"limit={self.limit}"] + [f"{k}={v}" for k, v in (("pipeline", self.pipeline),
                                                                   ("reviewer", self.reviewer)) if v]
        return STORE + ",".join(parts)


def parse_store_notes(spec: str) -> StoreNotes:
    """``store:`` / ``store:limit=10,pipeline=triage,reviewer=alice`` -> a StoreNotes.

    Raises:
        ConfigError: An unknown option or a limit that is not a positive integer.
    """
    found: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in spec[len(STORE):].split(","))):
        key, sep, value = (s.strip() for s in part.partition("="))
        if key == "limit" and sep and value.isdigit() and int(value) > 0:
            found["limit"] = int(value)
        elif key in ("pipeline", "reviewer") and sep and value:
            found[key] = value
        else:
            raise ConfigError(f"--param notes={spec}: unknown or malformed option {part!r}; write notes=store: or "
                              "notes=store:limit=10,pipeline=NAME,reviewer=NAME")
    return StoreNotes(**found)


# The latest label of each reviewer and rubric on a node call that failed it with a comment, and
# the latest correction of each node call; newest first, at most ``limit`` per node.
_NOTES_SQL = """
WITH last_labels AS (
    SELECT * FROM labels WHERE node IN ({nodes})
    QUALIFY row_number() OVER (PARTITION BY coalesce(call_id, trace_id), coalesce(validator, ''),
                               coalesce(reviewer, '') ORDER BY created_at DESC, label_id DESC) = 1),
last_corrections AS (
    SELECT * FROM corrections WHERE node IN ({nodes})
    QUALIFY row_number() OVER (PARTITION BY coalesce(call_id, trace_id || '/' || node)
                               ORDER BY created_at DESC, correction_id DESC) = 1),
notes AS (
    SELECT node, 'label' AS kind, trace_id, call_id, reviewer, created_at, comment, score,
           CAST(NULL AS JSON) AS corrected, label_id AS note_id
    FROM last_labels WHERE passed IS NOT TRUE AND nullif(trim(comment), '') IS NOT NULL
    UNION ALL
    SELECT node, 'correction', trace_id, call_id, reviewer, created_at, comment, NULL, outputs, correction_id
    FROM last_corrections)
SELECT n.node, n.kind, n.reviewer, n.created_at, n.comment, n.score, n.corrected, c.inputs,
       c.outputs AS produced, c.output_field
FROM notes n
LEFT JOIN node_calls c ON c.call_id = n.call_id
LEFT JOIN traces t ON t.trace_id = n.trace_id
WHERE (CAST(? AS VARCHAR) IS NULL OR t.pipeline = ?) AND (CAST(? AS VARCHAR) IS NULL OR n.reviewer = ?)
QUALIFY row_number() OVER (PARTITION BY n.node ORDER BY n.created_at DESC, n.note_id DESC) <= ?
ORDER BY n.created_at DESC, n.note_id DESC
"""


def _one_line(value: Any, limit: int = _PREVIEW) -> str:
    if isinstance(value, Mapping | list):
        value = json.dumps(value, ensure_ascii=False)
    text = " ".join(str(value).split())
    return text if len(text) <= limit else text[:limit] + "…"


def _field(outputs: Any, name: str | None) -> Any:
    if isinstance(outputs, str):
        try:
            outputs = json.loads(outputs)
        except ValueError:
            return outputs
    if isinstance(outputs, Mapping):
        if name and name in outputs:
            return outputs[name]
        return outputs if len(outputs) != 1 else next(iter(outputs.values()))
    return outputs


def _note_text(row: Mapping[str, Any]) -> str:
    """One store row as one line of notes."""
    inputs = _one_line(row.get("inputs")) if row.get("inputs") else ""
    if row["kind"] == "label":
        text = _one_line(row["comment"], 600)
        if row.get("score") is not None:
            text += f" (score {row['score']}/5)"
        return text + (f" (on the input {inputs})" if inputs else "")
    name = row.get("output_field")
    text = (f"a reviewer corrected {name or 'the output'} from \"{_one_line(_field(row.get('produced'), name))}\" "
            f"to \"{_one_line(_field(row.get('corrected'), name))}\"" + (f" for the input {inputs}" if inputs else ""))
    comment = _one_line(row.get("comment") or "", 600)
    return text + (f"; the reviewer wrote: {comment}" if comment else "")


def store_notes(store: Any, nodes: Sequence[str], options: StoreNotes = StoreNotes()) -> dict[str, list[str]]:
    """Notes by node from an open store (``experiments.store.Store``): failing labels' comments and
    corrections, newest first, ``options.limit`` per node, repeated texts once."""
    if not nodes:
        return {}
    rows = store.query(_NOTES_SQL.format(nodes=", ".join("?" * len(nodes))),
                       [*nodes, *nodes, options.pipeline, options.pipeline, options.reviewer, options.reviewer,
                        options.limit])
    found: dict[str, list[str]] = {}
    for row in rows:
        text = _note_text(row)
        if text not in found.setdefault(row["node"], []):
            found[row["node"]].append(text)
    return found


def _open_store(path: Path, spec: str) -> Any:
    from experiments.store import Store

    if not path.is_file():
        raise ConfigError(f"--param notes={spec}: no store at {path}; pass --param store=PATH or set $PIPEC_STORE "
                          "(pipec run records calls there, pipec review their reviews)")
    try:
        return Store.open(path, read_only=True)
    except Exception as exc:  # StoreError (missing file, newer schema) and StoreBusyError are UserErrors
        raise ConfigError(f"--param notes={spec}: {exc}") from exc


def _terminal_accept(diff: str) -> bool:
    sys.stderr.write(diff + "\nAccept this rewrite? [y/N] ")
    sys.stderr.flush()
    return sys.stdin.readline().strip().lower() in ("y", "yes")


class HumanFeedback(TextualOptimizer):
    """Rewrites from a person's notes, each accepted or rejected by the person.

    Args:
        notes: A notes file, ``-`` for stdin, ``store:`` (with options, see the module docstring)
            for the flywheel store's reviews, or None when ``reviews`` gives them.
        accept: ``ask`` (on the terminal; the default), ``all`` (keep every diff that scores no
            worse: for runs without a person, e.g. benchmarks) or ``none`` (record the diffs only).
        rounds: Rounds; with ``accept=ask``, each round after the first asks for new notes.
        store: The flywheel store ``notes=store:`` reads; None: ``$PIPEC_STORE``, else
            ``$PIPEC_HOME/store.duckdb``.
        reviews: A callable returning review rows (``node``, ``comment``, ``passed``).
        decide: Overrides how a diff is accepted: ``decide(diff) -> bool`` (tests, UIs).
        **common: See ``TextualOptimizer``.

    Raises:
        ConfigError: No source of notes, an unreadable notes file, a store that is missing or
            holds no notes, or ``accept=ask`` without a terminal.
    """

    method = "human"

    def __init__(self, metric: Any = None, *, notes: str | None = None, accept: str = "ask", rounds: int = 1,
                 store: str | None = None, reviews: Callable[[], Iterable[Mapping[str, Any]]] | None = None,
                 decide: Callable[[str], bool] | None = None, **common: Any) -> None:
        super().__init__(metric, **common)
        if accept not in ACCEPT:
            raise ConfigError(f"--param accept={accept!r}: choose one of {', '.join(ACCEPT)}")
        if notes is None and reviews is None:
            raise ConfigError("--optimizer human needs notes: --param notes=path/to/notes.txt (notes=- to read "
                              "them from stdin, notes=store: for the reviews in the flywheel store)")
        notes = None if notes is None else str(notes)
        self.store_options: StoreNotes | None = None
        self.store_path: Path | None = None
        if notes is not None and notes.startswith(STORE):
            from experiments.store import default_store_path

            self.store_options = parse_store_notes(notes)
            self.store_path = default_store_path(store)
            with _open_store(self.store_path, notes) as opened:
                count = opened.query("SELECT (SELECT count(*) FROM labels WHERE passed IS NOT TRUE AND "
                                     "nullif(trim(comment), '') IS NOT NULL) + (SELECT count(*) FROM corrections) "
                                     "AS n")[0]["n"]
            if not count:
                raise ConfigError(f"--param notes={notes}: the store {self.store_path} holds no review comments "
                                  "or corrections yet; review some calls with `pipec review`, or pass "
                                  "--store PATH or notes=FILE")
        elif notes not in (None, "-") and not Path(notes).is_file():
            raise ConfigError(f"--param notes={notes}: no such file; write one note per line ('node: note' for a "
                              "particular node), or use notes=- (stdin) or notes=store: (the flywheel store)")
        if accept == "ask" and decide is None and not (sys.stdin.isatty() and notes != "-"):
            raise ConfigError("--optimizer human asks before keeping each rewrite, which needs a terminal (and "
                              "notes not on stdin): pass --param accept=all or --param accept=none")
        self.notes_source, self.accept, self.rounds = notes, accept, max(1, int(rounds))
        self.reviews, self.decide = reviews, decide
        self.rounds_log: list[dict[str, Any]] = []
        self.notes_read: dict[str, int] = {}

    def _read_notes(self, round_: int) -> dict[str | None, list[str]]:
        """This round's notes by node (None: for the node that fails most)."""
        if round_ > 1:
            if self.notes_source != "-" and self.accept == "ask" and self.decide is None:
                sys.stderr.write(f"Notes for round {round_} (end with an empty line):\n")
                lines = []
                for line in iter(sys.stdin.readline, ""):
                    if not line.strip():
                        break
                    lines.append(line)
                return parse_notes("".join(lines), self.node_names)
            return {}
        found: dict[str | None, list[str]] = {}
        if self.store_options is not None:
            with _open_store(self.store_path, self.notes_source) as opened:
                found.update(store_notes(opened, self.node_names, self.store_options))
        elif self.notes_source == "-":
            found = parse_notes(sys.stdin.read(), self.node_names)
        elif self.notes_source is not None:
            found = parse_notes(Path(self.notes_source).read_text(encoding="utf-8"), self.node_names)
        for node, notes in parse_notes(self._review_notes(), self.node_names).items():
            found.setdefault(node, []).extend(notes)
        return found

    def _review_notes(self) -> str:
        if self.reviews is None:
            return ""
        lines = []
        for row in self.reviews():
            comment = " ".join(str(row.get("comment") or "").split())
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
            by_node = {node: notes for node, notes in self._read_notes(round_).items() if notes}
            for node, notes in by_node.items():
                self.notes_read[node or "(any node)"] = self.notes_read.get(node or "(any node)", 0) + len(notes)
            if not by_node:
                if round_ == 1 and self.store_options is not None:
                    logger.warning("human: the store %s holds no notes (%s) for the nodes %s; nothing to rewrite",
                                   self.store_path, self.store_options.describe(), ", ".join(self.node_names))
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
        source = self.notes_source or "reviews"
        if self.store_options is not None:
            source = f"{self.store_options.describe()} ({self.store_path})"
        return {"notes_source": source, "accept": self.accept, "notes_read": dict(self.notes_read),
                "rounds": [{k: v for k, v in r.items() if k not in ("before", "after")} for r in self.rounds_log]}
