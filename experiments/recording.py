"""Recording: every call of a program, with its node calls and their verdicts, into the store.

An application wraps its compiled program in a :class:`Recorder`; ``pipec run`` does the same for
JSONL input. Each call goes through ``experiments.runner.run_traced`` (the one core compile and
evaluate use too), in this order:

1. input guards (``metrics.guards``) judge the inputs; a blocked input is recorded with its
   reasons (``error_kind`` ``rejected``) and never reaches the LM; every guard verdict is kept
   (source ``guard``);
2. the program runs and each node call is captured (inputs, output, demos shown, latency, tokens);
3. the nodes' rule validators judge what each node produced, inline (source ``rule``); checks
   that need a gold output are skipped when the input carries none, and SQL is checked
   statically (the pipeline ran it already);
4. LLM judges (writer rules with a ``rubric``) run on a background thread and never block the
   caller; their verdicts are appended later (source ``judge``);
5. the trace goes on a queue; a writer thread appends queued traces to the store in batches
   (every ``batch_rows`` traces or ``flush_seconds``), and everything is written on ``close``.

Telemetry never breaks the caller: a store that fails is one warning (and a count of what was
lost), never an exception in the application.

With ``live_demos`` each node also takes demos from the store's reviewed node calls while it runs
(``programs.demo_pool``): a correction saved now is a demo for the very next similar call.

Example:
    >>> with Recorder(program, pipeline="triage", guards=[NotEmpty(), NoPII()]) as rec:  # doctest: +SKIP
    ...     prediction = rec(message="Where is my parcel?")
"""

from __future__ import annotations

import functools
import json
import logging
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dspy

from experiments.lm import LMConfig, make_lm
from experiments.runner import Trace, program_version, run_traced
from metrics.guards import Guards, InputLanguage, MaxLength, NoPII, NoPromptInjection, NotEmpty
from metrics.judge import LLMJudge
from metrics.pipeline_metric import PipelineMetric
from metrics.sql_checks import SqlResultMatch, analyze_sql
from metrics.verdict import Verdict
from programs.demo_pool import DEFAULT_HALF_LIFE_DAYS, LivePool, PoolRow
from programs.errors import ConfigError, DatasetError, PipelineError
from programs.nodes import Node
from programs.pipeline import Pipeline

__all__ = ["GUARDS", "Recorder", "RecorderStats", "ReviewCounter", "RunOptions", "StoreDemoSource", "parse_guards",
           "read_inputs", "run_program", "run_rows", "trace_record"]

logger = logging.getLogger(__name__)

GUARDS: dict[str, Callable[..., Any]] = {
    "not_empty": NotEmpty, "max_length": MaxLength, "pii": NoPII, "prompt_injection": NoPromptInjection,
    "language": InputLanguage,
}
"""The guards ``pipec run --guard`` knows, by name."""

_GUARD_ARG = {"max_length": ("max_chars", int), "pii": ("kinds", lambda v: tuple(v.split(","))),
              "language": ("languages", lambda v: tuple(v.split(",")))}


def parse_guards(specs: Iterable[str]) -> Guards | None:
    """``["not_empty", "pii:flag", "max_length=2000", "language=en,ja"]`` -> ``Guards``.

    Each spec is ``NAME[=VALUE][:flag]``: the value sets the guard's one setting (``max_length``:
    characters, ``language``: codes, ``pii``: kinds); ``:flag`` records without blocking.

    Raises:
        ConfigError: An unknown guard, or a bad value.
    """
    guards = []
    for spec in specs:
        text, action = spec.strip(), "block"
        if text.endswith(":flag"):
            text, action = text[: -len(":flag")], "flag"
        name, _, value = text.partition("=")
        if name not in GUARDS:
            raise ConfigError(f"--guard {spec!r}: unknown guard {name!r}; choose one of: {', '.join(GUARDS)} "
                              "(NAME[=VALUE][:flag])")
        settings: dict[str, Any] = {"action": action}
        if value:
            if name not in _GUARD_ARG:
                raise ConfigError(f"--guard {spec!r}: guard {name!r} takes no value")
            key, convert = _GUARD_ARG[name]
            try:
                settings[key] = convert(value)
            except ValueError as exc:
                raise ConfigError(f"--guard {spec!r}: bad value {value!r} ({exc})") from exc
        try:
            guards.append(GUARDS[name](**settings))
        except PipelineError as exc:
            raise ConfigError(f"--guard {spec!r}: {exc}") from exc
    return Guards(tuple(guards)) if guards else None


# ---------------------------------------------------------------------------------------------
# The live demo source over the store.
# ---------------------------------------------------------------------------------------------

def _json_value(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


_BULK_REVIEWS = 1_000  # this many new reviews or more: one join per table instead of point lookups
_COUNTS = "SELECT (SELECT count(*) FROM corrections) AS c, (SELECT count(*) FROM labels) AS l"


class ReviewCounter:
    """How many corrections and labels the store holds: the cheap "anything new?" check of the
    live demo pools (``count(*)`` is read from DuckDB's table metadata).

    A recorder checks once per call, before the program runs, and every node's pool reads that
    value, so a call costs one small query however many nodes it has.
    """

    def __init__(self, store: Any) -> None:
        self.store = store
        self.counts: tuple[int, int] | None = None

    def check(self) -> tuple[int, int]:
        row = self.store.query(_COUNTS)[0]
        self.counts = (int(row["c"]), int(row["l"]))
        return self.counts

    def current(self) -> tuple[int, int]:
        return self.counts if self.counts is not None else self.check()


class StoreDemoSource:
    """The reviewed calls of one node of one pipeline, as a ``programs.demo_pool.DemoSource``.

    A correction becomes a demo with its corrected output fields merged over what the node
    produced; a label that passed approves the call as it was, one that failed withdraws that
    approval (never a correction). Both tables are append-only, so the cursor is their row counts:
    the rows past it are the new ones (DuckDB numbers a table's rows from 0 in insertion order).
    It is also the pools' ``VectorCache``: vectors live in the store's embeddings table, so a pool
    over the store is embedded once, not at every start of a process.

    Args:
        store: An open ``experiments.store.Store``.
        pipeline: The traces' pipeline (as recorded).
        node: The node's name.
        counter: A shared ``ReviewCounter`` (a recorder's); by default each call checks itself.
    """

    def __init__(self, store: Any, pipeline: str, node: str, counter: ReviewCounter | None = None) -> None:
        self.store, self.pipeline, self.node = store, pipeline, node
        self.counter = counter

    def demos_since(self, cursor: Any) -> tuple[list[PoolRow], Any]:
        seen = tuple(cursor) if cursor else (0, 0)
        now = self.counter.current() if self.counter is not None else ReviewCounter(self.store).check()
        if now == seen:
            return [], now
        if now[0] - seen[0] + now[1] - seen[1] >= _BULK_REVIEWS:
            reviews, calls = self._bulk(seen, now)
        else:
            reviews = []  # (created_at µs, order, call_id, kind, corrected outputs or passed)
            if now[0] > seen[0]:
                reviews += [(r["at"], 0, r["call_id"], "correction", _json_value(r["outputs"])) for r in
                            self.store.query("SELECT call_id, outputs, epoch_us(created_at) AS at FROM corrections "
                                             "WHERE rowid >= ? AND rowid < ? AND node = ?",
                                             [seen[0], now[0], self.node])]
            if now[1] > seen[1]:
                reviews += [(r["at"], 1, r["call_id"], "approved", r["passed"]) for r in
                            self.store.query("SELECT call_id, passed, epoch_us(created_at) AS at FROM labels "
                                             "WHERE rowid >= ? AND rowid < ? AND node = ? AND passed IS NOT NULL",
                                             [seen[1], now[1], self.node])]
            calls = self._calls({call_id for _, _, call_id, _, _ in reviews})
        rows = []
        for created_at, _, call_id, kind, value in sorted(reviews, key=lambda r: (r[0] or 0, r[1])):
            call = calls.get(call_id)
            if call is None:
                continue  # a call of another pipeline
            if kind == "correction":
                demo = {**call["inputs"], **call["outputs"], **(value or {})}
            elif call["error"] is None:
                demo = {**call["inputs"], **call["outputs"]} if value else None
            else:
                continue  # a failed call approved as it was holds no output to show
            rows.append(PoolRow(call_id, demo, (created_at or 0) / 1e6, kind=kind))
        return rows, now

    def _bulk(self, seen: tuple[int, int], now: tuple[int, int]) -> tuple[list[tuple[Any, ...]], dict[str, Any]]:
        """Many new reviews (a pool's first refresh): each table joined with its calls in one query,
        the JSON read as text and decoded by orjson (a dependency of DSPy)."""
        from orjson import loads

        def decode(text: str | None) -> Any:
            return None if text is None else loads(text)

        reviews: list[tuple[Any, ...]] = []
        calls: dict[str, dict[str, Any]] = {}
        for table, order, kind, value, extra in (
                ("corrections", 0, "correction", "CAST(r.outputs AS VARCHAR)", ""),
                ("labels", 1, "approved", "r.passed", " AND r.passed IS NOT NULL")):
            first, last = seen[order], now[order]
            if last <= first:
                continue
            found = self.store.query(
                f"SELECT r.call_id, {value} AS value, epoch_us(r.created_at) AS at, CAST(c.inputs AS VARCHAR) AS i, "
                "CAST(c.outputs AS VARCHAR) AS o, c.error FROM (SELECT * FROM " + table + " WHERE rowid >= ? AND "
                f"rowid < ? AND node = ?) r JOIN node_calls c ON c.call_id = r.call_id JOIN traces t ON "
                f"t.trace_id = c.trace_id WHERE t.pipeline = ?{extra}", [first, last, self.node, self.pipeline])
            for r in found:
                reviews.append((r["at"], order, r["call_id"], kind, decode(r["value"]) if order == 0 else r["value"]))
                if r["call_id"] not in calls:
                    calls[r["call_id"]] = {"inputs": decode(r["i"]) or {}, "outputs": decode(r["o"]) or {},
                                           "error": r["error"]}
        return reviews, calls

    def cached_vectors(self, embedding: str, keys: Sequence[tuple[str, str]]) -> tuple[Any, Any]:
        return self.store.embedding_vectors(embedding, keys)

    def keep_vectors(self, embedding: str, keys: Sequence[tuple[str, str]], vectors: Any) -> None:
        if not getattr(self.store, "read_only", False):  # a reader reuses what is stored, and stores nothing
            self.store.add_embeddings([k for k, _ in keys], embedding, vectors, text_shas=[d for _, d in keys])

    def _calls(self, call_ids: set[str]) -> dict[str, dict[str, Any]]:
        """The reviewed calls of this pipeline, by id: point lookups on the tables' keys, not joins
        (a join would scan every recorded call for the few new reviews)."""
        if not call_ids:
            return {}
        found = self.store.query("SELECT call_id, trace_id, inputs, outputs, error FROM node_calls "
                                 "WHERE call_id IN (SELECT unnest(?::VARCHAR[]))", [sorted(call_ids)])
        mine = {r["trace_id"] for r in self.store.query(
            "SELECT trace_id FROM traces WHERE trace_id IN (SELECT unnest(?::VARCHAR[])) AND pipeline = ?",
            [sorted({r["trace_id"] for r in found}), self.pipeline])}
        return {r["call_id"]: {"inputs": _json_value(r["inputs"]) or {}, "outputs": _json_value(r["outputs"]) or {},
                               "error": r["error"]} for r in found if r["trace_id"] in mine}


# ---------------------------------------------------------------------------------------------
# Inline checks.
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SqlStatic:
    """CodeGen check for recorded calls: the SQL is one read-only SELECT over known tables and
    columns (the pipeline ran it already; without a gold query there is no result to compare)."""

    def __call__(self, output: Any, *, node: Node | None = None, **_: Any) -> Verdict:
        database = getattr(node, "database", None)
        schema = _schema(str(database), Path(database).stat().st_mtime_ns) if database and Path(database).exists() \
            else {}
        analysis = analyze_sql("" if output is None else str(output), schema)
        if analysis.refusal is not None:
            return Verdict.fail(f"the SQL was refused: {analysis.refusal}.", refused=True)
        if analysis.problems:
            return Verdict.fail(" ".join(analysis.problems), problems=list(analysis.problems))
        return Verdict.ok()


@functools.lru_cache(maxsize=8)
def _schema(database: str, stamp: int) -> dict[str, tuple[str, ...]]:
    from programs.sqlexec import table_columns

    return table_columns(database)


def _split_validators(metric: PipelineMetric) -> tuple[PipelineMetric, dict[str, list[Any]]]:
    """The metric with rule checks only (SQL checked statically), and each node's LLM judges."""
    judges = {name: [v for v in vs if isinstance(v, LLMJudge)] for name, vs in metric.validators.items()}
    metric.validators = {name: [SqlStatic() if isinstance(v, SqlResultMatch) else v for v in vs
                                if not isinstance(v, LLMJudge)] for name, vs in metric.validators.items()}
    return metric, {name: vs for name, vs in judges.items() if vs}


def _verdict_row(trace: Trace, source: str, verdict: Verdict, *, validator: str, node: str | None = None,
                 call_id: str | None = None) -> dict[str, Any]:
    return {"trace_id": trace.trace_id, "call_id": call_id, "node": node, "validator": validator, "source": source,
            "score": verdict.score if verdict.counted else None, "passed": verdict.passed,
            "counted": verdict.counted, "feedback": verdict.feedback, "details": verdict.details}


# ---------------------------------------------------------------------------------------------
# Background threads: the store writer and the judges.
# ---------------------------------------------------------------------------------------------

@dataclass
class RecorderStats:
    """What a recorder did: calls seen, traces and verdicts written or lost, judges pending."""

    calls: int = 0
    rejected: int = 0
    failed: int = 0
    traces_written: int = 0
    verdicts_written: int = 0
    traces_lost: int = 0
    verdicts_lost: int = 0
    judged: int = 0
    store_error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(vars(self))


_STOP = object()


@dataclass
class _Flush:
    done: threading.Event = field(default_factory=threading.Event)


class _Writer(threading.Thread):
    """Appends queued traces and verdicts to the store in batches (one transaction each)."""

    def __init__(self, store: Any, stats: RecorderStats, *, batch_rows: int, flush_seconds: float,
                 source: str, program: str | None, mlflow_run_id: str | None) -> None:
        super().__init__(name="pipec-recorder-writer", daemon=True)
        self.store, self.stats = store, stats
        self.batch_rows, self.flush_seconds = batch_rows, flush_seconds
        self.source, self.program, self.mlflow_run_id = source, program, mlflow_run_id
        self.queue: queue.Queue[Any] = queue.Queue()
        self.traces: list[Trace] = []
        self.rule_verdicts: dict[str, Any] = {}
        self.rows: list[dict[str, Any]] = []

    def run(self) -> None:
        deadline: float | None = None
        while True:
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                item = self.queue.get(timeout=timeout)
            except queue.Empty:
                item = None
            if item is _STOP:
                self._write()
                return
            if isinstance(item, _Flush):
                self._write()
                item.done.set()
                deadline = None
                continue
            if item is not None:
                kind, payload = item
                if kind == "trace":
                    trace, verdicts, rows = payload
                    self.traces.append(trace)
                    if verdicts:
                        self.rule_verdicts[trace.trace_id] = verdicts
                    self.rows.extend(rows)
                else:
                    self.rows.extend(payload)
                if deadline is None:
                    deadline = time.monotonic() + self.flush_seconds
            if item is None or len(self.traces) + len(self.rows) >= self.batch_rows:
                self._write()
                deadline = None

    def _write(self) -> None:
        traces, verdicts, rows = self.traces, self.rule_verdicts, self.rows
        self.traces, self.rule_verdicts, self.rows = [], {}, []
        if not traces and not rows:
            return
        try:
            if traces:
                self.store.append_traces(traces, verdicts, mlflow_run_id=self.mlflow_run_id, source=self.source,
                                         program=self.program, verdict_source="rule")
                self.stats.traces_written += len(traces)
            if rows:
                self.store.add_verdicts(rows)
                self.stats.verdicts_written += len(rows)
        except Exception as exc:  # telemetry never breaks the caller: warn once, count what was lost
            if self.stats.store_error is None:
                logger.warning("pipec: recording to the store %s failed (%s: %s); the calls still run, but "
                               "are not recorded", getattr(self.store, "path", "?"), type(exc).__name__, exc)
            self.stats.store_error = f"{type(exc).__name__}: {exc}"
            self.stats.traces_lost += len(traces)
            self.stats.verdicts_lost += len(rows)


class _Judges(threading.Thread):
    """Runs the LLM judges of recorded node calls, one at a time, off the caller's thread."""

    def __init__(self, judges: Mapping[str, list[Any]], nodes: Mapping[str, Node], writer: _Writer,
                 stats: RecorderStats) -> None:
        super().__init__(name="pipec-recorder-judges", daemon=True)
        self.judges, self.nodes, self.writer, self.stats = judges, nodes, writer, stats
        self.queue: queue.Queue[Any] = queue.Queue()

    def run(self) -> None:
        while True:
            item = self.queue.get()
            try:
                if item is _STOP:
                    return
                trace, lm, adapter = item
                with dspy.context(lm=lm, adapter=adapter):
                    rows = self._judge(trace)
                if rows:
                    self.writer.queue.put(("verdicts", rows))
            except Exception as exc:  # a judge that cannot run is a lost verdict, never a crash
                logger.warning("pipec: a background judge failed (%s: %s)", type(exc).__name__, exc)
            finally:
                self.queue.task_done()

    def _judge(self, trace: Trace) -> list[dict[str, Any]]:
        rows = []
        for call in trace.calls:
            if call.error is not None or call.output is None:
                continue
            seen = dspy.Prediction(**{**call.inputs, **(call.outputs or {})})
            for judge in self.judges.get(call.node, ()):
                verdict = judge(call.output, gold=None, example=None, prediction=seen, node=self.nodes[call.node])
                rows.append(_verdict_row(trace, "judge", verdict, validator=judge.name, node=call.node,
                                         call_id=f"{trace.trace_id}/{call.position}"))
                self.stats.judged += 1
        return rows


# ---------------------------------------------------------------------------------------------
# The recorder.
# ---------------------------------------------------------------------------------------------

def _uses_store_pool(program: Pipeline) -> bool:
    return any(getattr(node.retrieval, "pool", None) == "store" for node in program.nodes().values())


class Recorder:
    """Records every call of ``program`` in the flywheel store.

    Use it as a context manager (or call ``close``): on exit every queued trace is written and
    every background judge has answered.

    Args:
        program: A pipec ``Pipeline`` (compiled or not).
        store: An open ``experiments.store.Store`` (shared, not closed here), or a path (else
            ``$PIPEC_STORE`` / ``$PIPEC_HOME/store.duckdb``), opened for the recorder's lifetime.
        pipeline: The pipeline's name as recorded (``triage``, or ``path/file.py:Class``).
        program_path: The compiled program's file, recorded with each trace.
        guards: ``metrics.Guards`` or a list of guards, run before every call.
        judge_lm: The LM of the LLM judges (``dspy.LM`` or ``LMConfig``); the caller's LM if None.
        judges: Run LLM judges in the background (off: rule checks only).
        live_demos: Attach a live demo pool from the store to every node; None: only when the
            program was compiled with ``--optimizer knn --param pool=store``.
        half_life_days: Recency half-life of the live demos.
        batch_rows: Write when this many traces and verdicts are queued...
        flush_seconds: ...or this long after the first of them was queued.
        source: The traces' source column (``run``).
        mlflow_run_id: The MLflow run the traces belong to, if any.
    """

    def __init__(self, program: Pipeline, *, store: Any = None, pipeline: str = "", program_path: str | None = None,
                 guards: Guards | Sequence[Any] | None = None, judge_lm: Any = None, judges: bool = True,
                 live_demos: bool | None = None, half_life_days: float | None = DEFAULT_HALF_LIFE_DAYS,
                 batch_rows: int = 500, flush_seconds: float = 1.0, source: str = "run",
                 mlflow_run_id: str | None = None) -> None:
        if not isinstance(program, Pipeline):
            raise PipelineError(f"a Recorder records pipec Pipelines, got {type(program).__name__}")
        if batch_rows < 1 or flush_seconds <= 0:
            raise ConfigError("batch_rows must be >= 1 and flush_seconds > 0")
        from experiments.store import Store

        self.program = program
        self.pipeline = pipeline or type(program).__name__
        self.guards = guards if isinstance(guards, Guards) or guards is None else Guards(tuple(guards))
        self.version = program_version(program)
        metric = PipelineMetric(program, judge_lm=judge_lm)
        self.rules, judge_validators = _split_validators(metric)
        self.stats = RecorderStats()
        self._gold_fields = set(program.gold.values()) - set(program.inputs)
        self._owns_store = not hasattr(store, "append_traces")
        self.store = Store.open(store) if self._owns_store else store
        self._writer = _Writer(self.store, self.stats, batch_rows=batch_rows, flush_seconds=flush_seconds,
                               source=source, program=program_path, mlflow_run_id=mlflow_run_id)
        self._judges = _Judges(judge_validators, program.nodes(), self._writer, self.stats) \
            if judges and judge_validators else None
        if self._judges is not None:  # each judge's demos: the store's human labels nearest the call (issue 10)
            from experiments.alignment import LabelledJudgeDemos

            for judge in (j for js in judge_validators.values() for j in js):
                judge.demo_source = LabelledJudgeDemos.over_store(self.store, mode=judge.mode)
        live = _uses_store_pool(program) if live_demos is None else live_demos
        self._attached: dict[str, Any] = {}
        self._reviews = ReviewCounter(self.store) if live else None
        if live:
            for name, node in program.nodes().items():
                self._attached[name] = node.live_pool
                source = StoreDemoSource(self.store, self.pipeline, name, self._reviews)
                node.live_pool = LivePool.for_node(node, source, half_life_days=half_life_days)
        self._writer.start()
        if self._judges is not None:
            self._judges.start()
        self._closed = False

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def run(self, **inputs: Any) -> Trace:
        """Runs one call and records it; returns its trace (never raises for the program's errors).

        Gold fields among ``inputs`` (the pipeline's ``gold``) are not passed to the program; the
        checks that need them use them.
        """
        if self._closed:
            raise ConfigError("this Recorder is closed; open a new one")
        gold = {k: inputs.pop(k) for k in list(inputs) if k in self._gold_fields}
        if self._reviews is not None:
            try:
                self._reviews.check()  # once per call: every node's live pool reads this count
            except Exception as exc:  # the store is telemetry: its failure costs the live demos only
                logger.warning("pipec: reading the store for live demos failed (%s: %s)", type(exc).__name__, exc)
        trace = run_traced(self.program, inputs, pipeline_name=self.pipeline, guards=self.guards,
                           version=self.version)
        self.stats.calls += 1
        rows = [_verdict_row(trace, "guard", v, validator=name) for name, v in trace.guard_verdicts.items()]
        verdicts = None
        if trace.error_kind == "rejected":
            self.stats.rejected += 1
        else:
            if trace.error is not None:
                self.stats.failed += 1
            example = dspy.Example(**inputs, **gold) if gold else None
            try:
                verdicts = {node: {"rules": v}
                            for node, v in self.rules.judge_calls(example, trace.calls,
                                                                  failed=trace.error is not None).items()}
            except Exception as exc:  # a check that cannot run must not fail the application's call
                logger.warning("pipec: the rule checks of a recorded call failed (%s: %s)", type(exc).__name__, exc)
        self._writer.queue.put(("trace", (trace, verdicts, rows)))
        if self._judges is not None and trace.calls:
            self._judges.queue.put((trace, dspy.settings.lm, dspy.settings.adapter))
        return trace

    def __call__(self, **inputs: Any) -> Any:
        """Runs one call, records it, and returns the prediction.

        Raises:
            InputRejectedError: A guard blocked the input (it was recorded, not sent to the LM).
            Exception: Whatever the program raised (also recorded).
        """
        trace = self.run(**inputs)
        if trace.exception is not None:
            raise trace.exception
        return trace.prediction

    def flush(self) -> None:
        """Blocks until every trace queued so far is written (judges still pending are not waited for)."""
        marker = _Flush()
        self._writer.queue.put(marker)
        marker.done.wait()

    def close(self) -> RecorderStats:
        """Waits for the judges, writes everything queued, detaches the live pools, closes the store
        (when the recorder opened it). Idempotent."""
        if self._closed:
            return self.stats
        self._closed = True
        if self._judges is not None:
            self._judges.queue.put(_STOP)
            self._judges.join()
        self._writer.queue.put(_STOP)
        self._writer.join()
        for name, previous in self._attached.items():
            self.program.nodes()[name].live_pool = previous
        if self._owns_store:
            self.store.close()
        if self.stats.store_error is not None:
            logger.warning("pipec: %d traces and %d verdicts were not recorded: %s", self.stats.traces_lost,
                           self.stats.verdicts_lost, self.stats.store_error)
        return self.stats


# ---------------------------------------------------------------------------------------------
# pipec run: JSONL in, JSONL out.
# ---------------------------------------------------------------------------------------------

def read_inputs(source: str, pipeline: Pipeline) -> list[dict[str, Any]]:
    """The input rows of ``source`` (a JSONL file, or ``-`` for stdin), all checked before any runs.

    Raises:
        DatasetError: A missing file, a malformed line, or a row without one of the pipeline's
            inputs (the message names the file, the line and the field).
    """
    name = "<stdin>" if source == "-" else source
    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise DatasetError("file not found", path=name) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"cannot read the input: {exc}", path=name) from exc
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DatasetError(f"malformed JSON ({exc.msg}); each line is one JSON object", path=name,
                               line=number) from exc
        if not isinstance(row, dict):
            raise DatasetError("expected a JSON object with the pipeline's inputs", path=name, line=number)
        for input_field in pipeline.inputs:
            if input_field not in row:
                raise DatasetError(f"missing; each line needs {', '.join(pipeline.inputs)}", path=name,
                                   line=number, field=input_field)
        rows.append(row)
    return rows


def trace_record(trace: Trace, *, detail: bool) -> dict[str, Any]:
    """One output line of ``pipec run``: the outputs (and the error); with ``detail`` the trace id,
    the guards' reasons and each node call's output and demos too."""
    plain = trace.as_dict()
    record: dict[str, Any] = dict(plain["outputs"] or {})
    if trace.error is not None:
        record.update(error=trace.error, error_kind=trace.error_kind)
    if detail:
        record = {"trace_id": trace.trace_id, "outputs": plain["outputs"], "error": trace.error,
                  "error_kind": trace.error_kind, "seconds": round(trace.seconds, 4),
                  "guards": {name: {"passed": v.passed, "feedback": v.feedback}
                             for name, v in trace.guard_verdicts.items()},
                  "calls": [{"node": c["node"], "outputs": c["outputs"], "error": c["error"], "demos": c["demos"]}
                            for c in plain["calls"]]}
    return record


def run_rows(recorder: Recorder, rows: Sequence[Mapping[str, Any]]) -> Iterator[Trace]:
    """Runs and records each row; yields the traces in order."""
    for row in rows:
        yield recorder.run(**dict(row))


@dataclass
class RunOptions:
    """What ``pipec run`` was asked to do."""

    target: str
    input: str = "-"
    pipeline: str | None = None
    store: str | None = None
    guards: tuple[str, ...] = ()
    lm: Any = None
    api_base: str | None = None
    judge_lm: Any = None
    judges: bool = True
    cache: bool = True
    live_demos: bool | None = None
    half_life_days: float | None = DEFAULT_HALF_LIFE_DAYS
    detail: bool = False


def run_program(opts: RunOptions, emit: Callable[[dict[str, Any]], None],
                say: Callable[[str], None] = logger.info) -> dict[str, Any]:
    """``pipec run``: loads the program, checks every input line, then runs and records each one.

    Everything the user can get wrong (program, guards, input lines, LM, store) is checked before
    the first call, so bad input never leaves half an output behind.

    Args:
        opts: The request.
        emit: Called with each output record, in input order, as soon as its call is done.
        say: Where progress lines go.

    Returns:
        The summary: calls, rejected, failed, what was written to the store, and its path.
    """
    from experiments.evaluate_run import EvaluateOptions, _load

    spec, program_path, program = _load(EvaluateOptions(target=opts.target, pipeline=opts.pipeline))
    guards = parse_guards(opts.guards)
    rows = read_inputs(opts.input, program)
    wanted = set(program.inputs) | set(program.gold.values())
    lm = opts.lm if isinstance(opts.lm, LMConfig) else make_lm(opts.lm, api_base=opts.api_base, cache=opts.cache)
    judge = opts.judge_lm
    if isinstance(judge, str):
        judge = make_lm(judge, api_base=opts.api_base, cache=opts.cache)
    started = time.perf_counter()
    with dspy.context(lm=lm.lm, adapter=lm.adapter), \
            Recorder(program, store=opts.store, pipeline=spec, program_path=str(program_path) if program_path else None,
                     guards=guards, judge_lm=judge, judges=opts.judges, live_demos=opts.live_demos,
                     half_life_days=opts.half_life_days) as recorder:
        say(f"Running {spec}{f' ({program_path})' if program_path else ''} on {len(rows)} inputs with "
            f"{lm.settings.get('model')}; recording to {recorder.store.path}.")
        for trace in run_rows(recorder, [{k: v for k, v in row.items() if k in wanted} for row in rows]):
            emit(trace_record(trace, detail=opts.detail))
        if recorder._judges is not None and not recorder._judges.queue.empty():
            say("Waiting for the background judges to finish.")
        path = recorder.store.path
    stats = recorder.stats
    summary = {"pipeline": spec, "program": str(program_path) if program_path else None, "store": str(path),
               "seconds": round(time.perf_counter() - started, 3), **stats.as_dict()}
    say(f"Recorded {stats.traces_written} of {stats.calls} calls ({stats.rejected} rejected, {stats.failed} failed), "
        f"{stats.verdicts_written} guard and judge verdicts, in {path}."
        + (f" NOT recorded: {stats.traces_lost} calls ({stats.store_error})." if stats.traces_lost else ""))
    return summary
