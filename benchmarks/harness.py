"""What every benchmark shares: a scripted LM with a fixed latency, alternating runs, medians,
machine information, and the result files (JSON and a Markdown table) in ``benchmarks/results``.

Every comparison runs its contenders in one process, alternately, and reports ratios: this
machine's cores are shared with other workloads, so absolute times drift between runs while the
ratio of two contenders measured side by side does not. Absolute times are written down for
context and never compared across runs.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import re
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dspy

from benchmarks.banking77 import INTENTS6
from experiments.lm import LMConfig

__all__ = [
    "RATIO_NOTE",
    "RESULTS_DIR",
    "LatencyEngine",
    "alternate",
    "fresh_dspy_cache",
    "intent_answer",
    "latency_lm",
    "machine_info",
    "markdown_table",
    "median",
    "show_progress",
    "tracking_store",
    "write_jsonl",
    "write_result",
]

RESULTS_DIR = Path(__file__).resolve().parent / "results"

RATIO_NOTE = ("Contenders ran alternately in one process and are compared by ratio; the machine's cores are "
              "shared with other workloads, so absolute times vary between runs and are context only.")

_FIELD = re.compile(r"\[\[ ## (\w+) ## \]\]\n(.*?)(?=\n\n\[\[ ## |\Z)", re.S)

# A keyword classifier for the intents6 labels: right on most messages, wrong on some, so
# bootstrapping finds demos that pass and random search sees candidates that differ.
_INTENT_KEYWORDS = (
    ("stolen", "lost_or_stolen_card"), ("lost", "lost_or_stolen_card"), ("pin", "pin_blocked"),
    ("blocked", "pin_blocked"), ("exchange", "exchange_rate"), ("rate", "exchange_rate"),
    ("top", "top_up_failed"), ("recipient", "transfer_not_received_by_recipient"),
    ("transfer", "transfer_not_received_by_recipient"), ("arriv", "card_arrival"), ("card", "card_arrival"),
)


def intent_answer(text: str) -> str:
    """The scripted LM's intent for ``text``: the first keyword rule that matches."""
    lowered = text.lower()
    return next((label for key, label in _INTENT_KEYWORDS if key in lowered), INTENTS6[0])


def _text(parts: Any) -> str:
    return parts if isinstance(parts, str) else "".join(getattr(p, "text", "") or "" for p in parts or ())


class LatencyEngine:
    """A DSPy engine that answers like a scripted model after a fixed latency.

    It is a real engine (DSPy's ``complete(Request) -> Response`` contract, as in
    ``tests/fakes.py``), so the adapter, cache, usage tracking and optimizers above it all run
    for real; ``time.sleep`` releases the GIL, as waiting on a remote model does.

    Args:
        latency_s: Seconds each call takes.
        answer: ``answer(output_field, schema, inputs)`` -> the field's value; by default an
            enum field gets :func:`intent_answer` of the inputs, any other field a fixed text.
    """

    supports_response_schema = True
    supports_function_calling = False
    supports_reasoning = False
    supported_params = frozenset({"temperature", "max_tokens", "response_format"})

    def __init__(self, latency_s: float, answer: Callable[[str, dict, dict[str, str]], Any] | None = None) -> None:
        self.latency_s = latency_s
        self.answer = answer or _default_answer
        self.calls = 0
        self._lock = threading.Lock()

    def complete(self, request: Any) -> Any:
        from dspy.lm15 import Message, Response, TextPart, Usage

        if self.latency_s:
            time.sleep(self.latency_s)
        with self._lock:
            self.calls += 1
        last = _text(request.messages[-1].parts).split("\n\nRespond with")[0]
        inputs = {name: value.strip() for name, value in _FIELD.findall(last)}
        schema = (request.config.response_format or {}).get("schema", {})
        props = schema.get("properties", {})
        answer = {name: self.answer(name, prop, inputs) for name, prop in props.items()}
        return Response(id=None, model="bench/scripted", message=Message.assistant([TextPart(json.dumps(answer))]),
                        finish_reason="stop", usage=Usage(input_tokens=100, output_tokens=10, total_tokens=110))

    def stream(self, request: Any) -> Any:
        from dspy.lm15 import response_to_events

        return response_to_events(self.complete(request))

    def close(self) -> None:
        """Nothing to release."""


def _default_answer(name: str, prop: dict, inputs: dict[str, str]) -> Any:
    if "enum" in prop:
        label = intent_answer(" ".join(inputs.values()))
        return label if label in prop["enum"] else prop["enum"][0]
    return "ok"


def latency_lm(latency_ms: float, *, cache: bool = False, adapter: Any = None) -> tuple[LMConfig, LatencyEngine]:
    """An LMConfig around a :class:`LatencyEngine` (temperature 0), and the engine.

    The adapter is ``dspy.JSONAdapter()`` unless ``adapter`` is given (pipec's own, for a
    contender that stands for ``pipec compile``).
    """
    engine = LatencyEngine(latency_ms / 1000.0)
    lm = dspy.LM("bench/scripted", engine=engine, cache=cache, temperature=0.0, max_tokens=256)
    settings = {"model": "bench/scripted", "latency_ms": latency_ms, "temperature": 0.0, "cache": cache}
    return LMConfig(lm, adapter if adapter is not None else dspy.JSONAdapter(), settings, None), engine


@contextmanager
def fresh_dspy_cache(directory: str | os.PathLike | None = None) -> Iterator[None]:
    """DSPy's response cache on disk in ``directory`` (no memory tier), or off when ``None``.

    The previous cache object is put back on exit, so a benchmark never leaves its cache behind.
    """
    previous = vars(dspy).get("cache")  # not dspy.cache: reading it builds the default cache
    if directory is None:
        dspy.configure_cache(enable_disk_cache=False, enable_memory_cache=False)
    else:
        dspy.configure_cache(enable_disk_cache=True, enable_memory_cache=False, disk_cache_dir=str(directory))
    try:
        yield
    finally:
        if previous is None:
            vars(dspy).pop("cache", None)
        else:
            dspy.cache = previous


@contextmanager
def tracking_store(path: str | os.PathLike, experiments: Sequence[str] = ()) -> Iterator[str]:
    """``MLFLOW_TRACKING_URI`` set to a sqlite store at ``path`` inside the block, then put back.

    The ``experiments`` are created with their artifacts beside the store: by default MLflow
    would put them in ``./mlruns`` of the working directory, outliving the temporary store.
    """
    from mlflow.tracking import MlflowClient

    previous = os.environ.get("MLFLOW_TRACKING_URI")
    uri = f"sqlite:///{Path(path)}"
    os.environ["MLFLOW_TRACKING_URI"] = uri
    client = MlflowClient(uri)
    for name in experiments:
        if client.get_experiment_by_name(name) is None:
            client.create_experiment(name, artifact_location=(Path(path).parent / "artifacts" / name).as_uri())
    try:
        yield uri
    finally:
        if previous is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = previous


def write_jsonl(path: Path, examples: Sequence[dspy.Example]) -> Path:
    """Writes intent examples (``text``, ``label``) as JSONL, the form ``pipec compile`` reads."""
    path.write_text("".join(json.dumps({"text": e.text, "label": e.label}) + "\n" for e in examples),
                    encoding="utf-8")
    return path


def show_progress() -> None:
    """Progress lines of the benchmarks (logger ``benchmarks``, INFO) on stderr, once per process."""
    log = logging.getLogger("benchmarks")
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("bench: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


def median(values: Sequence[float]) -> float:
    """The median of ``values``."""
    return float(statistics.median(values))


def alternate(contenders: Mapping[str, Callable[[], Any]], rounds: int, *, warmup: bool = True
              ) -> dict[str, list[tuple[float, Any]]]:
    """Runs the contenders in turn (ABAB...), ``rounds`` times each, after one untimed warm-up round.

    Returns:
        ``{name: [(seconds, result), ...]}`` in run order.
    """
    if warmup:
        for fn in contenders.values():
            fn()
    timings: dict[str, list[tuple[float, Any]]] = {name: [] for name in contenders}
    for round_index in range(rounds):
        # Reverse the order every other round so neither contender always runs first (ABBA).
        names = list(contenders) if round_index % 2 == 0 else list(reversed(contenders))
        for name in names:
            start = time.perf_counter()
            result = contenders[name]()
            timings[name].append((time.perf_counter() - start, result))
    return timings


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return None


def machine_info() -> dict[str, Any]:
    """The machine, the software versions and the code version, for the result file."""
    from experiments.compile import versions
    from experiments.tracking import code_version

    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_gb": _memory_gb(),
        "platform": platform.platform(),
        "load_average_at_start": [round(x, 2) for x in load] if load else None,
        "versions": versions(),
        **code_version(Path(__file__).resolve().parent),
    }


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub Markdown table; floats are written with 3 significant decimals."""

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.3f}" if abs(value) < 1000 else f"{value:.0f}"
        return str(value)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_result(name: str, result: dict[str, Any], table: str, *, command: str | None = None,
                 results_dir: str | os.PathLike | None = None) -> tuple[Path, Path]:
    """Writes ``<name>.json`` (the result, the date, the machine) and ``<name>.md`` (the table).

    Args:
        name: The benchmark's name (``overhead``, ``local-lm``, ...).
        result: The benchmark's figures; the date and machine information are added.
        table: The Markdown table of the headline figures.
        command: The command that produced the result (written under the table).
        results_dir: Where to write; ``benchmarks/results`` by default.

    Returns:
        The paths of the JSON and the Markdown file.
    """
    out = Path(results_dir) if results_dir else RESULTS_DIR
    out.mkdir(parents=True, exist_ok=True)
    date = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    command = command or f"pipec bench {name}"
    document = {"benchmark": name, "date": date, "command": command, **result, "machine": machine_info()}
    json_path = out / f"{name}.json"
    json_path.write_text(json.dumps(document, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")
    machine = document["machine"]
    md = (f"### {name}\n\n{table}\n\n"
          f"`{command}` · {date} · {machine['cpu']}, {machine['cores']} cores · "
          f"dspy {machine['versions'].get('dspy', '?')}, mlflow {machine['versions'].get('mlflow', '?')}\n")
    md_path = out / f"{name}.md"
    md_path.write_text(md, encoding="utf-8")
    return json_path, md_path
