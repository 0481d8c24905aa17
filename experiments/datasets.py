"""Loading trainsets and devsets (JSONL or CSV) as ``dspy.Example`` lists, checked against a
pipeline: every error names the file, the line and the field."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dspy

from programs.errors import DatasetError
from programs.nodes import Classifier
from programs.pipeline import Pipeline

__all__ = ["Dataset", "load_dataset", "read_rows", "split_dataset"]

_FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv"}


@dataclass(frozen=True)
class Dataset:
    """Examples loaded from one file, with where each came from and a content hash."""

    path: str
    examples: tuple[dspy.Example, ...]
    lines: tuple[int, ...]
    digest: str
    provenance: dict[str, Any] = field(default_factory=dict)  # a store: trainset: what was read (MLflow params)

    def __len__(self) -> int:
        return len(self.examples)


def _decode(path: Path) -> str:
    """The file's text: UTF-8, with or without a byte-order mark (spreadsheet programs write one).

    Raises:
        DatasetError: On bytes that are not UTF-8, naming the line and the byte's column in it.
    """
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        bad = " ".join(f"0x{b:02x}" for b in data[exc.start:exc.end])
        raise DatasetError(f"not UTF-8 text: byte {bad} at byte column {column} ({exc.reason}); save the file "
                           "as UTF-8", path=str(path), line=line) from exc
    return text.removeprefix("\ufeff")


def _read_jsonl(path: Path) -> list[tuple[int, dict[str, Any]]]:
    rows = []
    for number, line in enumerate(io.StringIO(_decode(path), newline=None), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DatasetError(f"malformed JSON: {exc.msg} (column {exc.colno})", path=str(path),
                               line=number) from exc
        if not isinstance(row, dict):
            raise DatasetError(f"expected a JSON object, got {type(row).__name__}", path=str(path),
                               line=number)
        rows.append((number, row))
    return rows


def _read_csv(path: Path) -> list[tuple[int, dict[str, Any]]]:
    rows = []
    with io.StringIO(_decode(path), newline="") as handle:
        reader = csv.reader(handle)
        try:
            header = next(reader)
        except StopIteration:
            return []
        except csv.Error as exc:
            raise DatasetError(f"malformed CSV: {exc}", path=str(path), line=1) from exc
        header = [h.strip() for h in header]
        if len(set(header)) != len(header) or not all(header):
            raise DatasetError(f"the CSV header has empty or repeated column names: {header}", path=str(path),
                               line=1)
        try:
            for values in reader:
                if not any(v.strip() for v in values):
                    continue
                if len(values) != len(header):
                    raise DatasetError(f"malformed CSV row: {len(values)} values for {len(header)} columns "
                                       f"({', '.join(header)})", path=str(path), line=reader.line_num)
                rows.append((reader.line_num, dict(zip(header, values, strict=True))))
        except csv.Error as exc:
            raise DatasetError(f"malformed CSV: {exc}", path=str(path), line=reader.line_num) from exc
    return rows


def read_rows(path: str | Path) -> list[tuple[int, dict[str, Any]]]:
    """Reads ``(line number, row)`` pairs from a JSONL or CSV file, unchecked."""
    path = Path(path)
    kind = _FORMATS.get(path.suffix.lower())
    if kind is None:
        raise DatasetError(f"unsupported file type {path.suffix or '(none)'!r}: use JSONL (.jsonl) or CSV (.csv)",
                           path=str(path))
    if not path.is_file():
        raise DatasetError("file not found", path=str(path))
    return _read_jsonl(path) if kind == "jsonl" else _read_csv(path)


def load_dataset(path: str | Path, pipeline: Pipeline, *, store: str | Path | None = None,
                 pipeline_name: str | None = None) -> Dataset:
    """Loads ``path`` and checks every row against ``pipeline``.

    Each row must hold the pipeline's input fields and gold fields, non-empty, and a classifier's
    gold label must be in its label set.

    ``path`` may also be ``store:`` with filters (``store:approved``, ``store:node=classify``,
    ``store:pipeline=triage``, comma-separated): the rows ``pipec export`` would write from the
    flywheel store ``store`` (default ``$PIPEC_STORE``, else ``$PIPEC_HOME/store.duckdb``), of the
    traces of ``pipeline_name`` unless the spec names a pipeline. ``Dataset.path`` is then
    ``STORE_FILE#store:...`` and ``Dataset.provenance`` says what was read.

    Raises:
        DatasetError: Naming the file, line and field of the first problem.
    """
    provenance: dict[str, Any] = {}
    if str(path).startswith("store:"):
        from experiments.store import store_dataset_rows

        rows, provenance = store_dataset_rows(str(path), pipeline, store=store, default_pipeline=pipeline_name)
    else:
        rows = read_rows(path)
    if not rows:
        raise DatasetError("the file holds no examples", path=str(path))
    required = pipeline.required_fields()
    labels = {pipeline.gold[name]: node.labels for name, node in pipeline.nodes().items()
              if isinstance(node, Classifier) and name in pipeline.gold}
    examples = []
    for line, row in rows:
        for name in required:
            value = row.get(name)
            if value is None or (isinstance(value, str) and not value.strip()):
                state = "missing" if name not in row else "empty"
                raise DatasetError(f"{state}; the pipeline needs fields {', '.join(required)}", path=str(path),
                                   line=line, field=name)
        for name, allowed in labels.items():
            if str(row[name]).strip() not in allowed:
                raise DatasetError(f"label {row[name]!r} is not one of: {', '.join(allowed)}", path=str(path),
                                   line=line, field=name)
        examples.append(dspy.Example(**row).with_inputs(*pipeline.inputs))
    canonical = json.dumps([row for _, row in rows], sort_keys=True, ensure_ascii=False, default=str)
    digest = hashlib.sha256(canonical.encode("utf-8")).hexdigest()
    # A store's rows are named STORE_FILE#store:FILTERS: one string that says which rows of which file
    # (and a source MLflow can record).
    name = f"{provenance['state.path']}#{path}" if provenance else str(path)
    return Dataset(name, tuple(examples), tuple(line for line, _ in rows), digest, provenance)


def split_dataset(examples: Sequence[dspy.Example], *, seed: int, val_fraction: float = 0.4
                  ) -> tuple[list[dspy.Example], list[dspy.Example]]:
    """A seeded shuffle split into (train, val); both non-empty when there are two examples or more."""
    if len(examples) < 2:
        raise DatasetError(f"need at least 2 examples to split into train and val, got {len(examples)}; "
                           "add examples or pass --valset")
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_val = min(len(order) - 1, max(1, round(len(order) * val_fraction)))
    val = [examples[i] for i in sorted(order[:n_val])]
    train = [examples[i] for i in sorted(order[n_val:])]
    return train, val
