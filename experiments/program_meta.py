"""Which pipeline a saved program belongs to.

A compiled program is DSPy JSON: node states (demos, instructions), not the pipeline's code.
``pipec compile`` records the pipeline spec in the file's ``metadata.pipec`` (DSPy keeps its own
``metadata`` there and ignores other keys on load), so ``pipec evaluate program.json`` can
rebuild the right pipeline without being told. A file pipeline's path is recorded absolute, so
the program can be evaluated from another directory.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from programs.errors import PipelineError
from programs.pipeline import Pipeline

__all__ = ["program_meta", "read_program_meta", "stamp_program"]


def program_meta(spec: str, pipeline: Pipeline) -> dict[str, str]:
    """The metadata to record for a program compiled from pipeline ``spec``."""
    if ":" in spec:
        file_part, _, class_name = spec.rpartition(":")
        spec = f"{Path(file_part).expanduser().resolve()}:{class_name}"
    cls = type(pipeline)
    return {"pipeline": spec, "class": f"{cls.__module__}.{cls.__qualname__}"}


def stamp_program(path: str | Path, meta: Mapping[str, Any]) -> None:
    """Adds ``meta`` to the saved program at ``path`` as ``metadata.pipec``."""
    path = Path(path)
    state = json.loads(path.read_text(encoding="utf-8"))
    state.setdefault("metadata", {})["pipec"] = dict(meta)
    path.write_text(json.dumps(state, ensure_ascii=False, indent=2), encoding="utf-8")


def read_program_meta(path: str | Path) -> dict[str, Any] | None:
    """The ``metadata.pipec`` of a saved program, or None when pipec did not record one.

    Raises:
        PipelineError: The file is missing or is not a DSPy JSON program.
    """
    path = Path(path)
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise PipelineError(f"{path}: program file not found") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PipelineError(f"{path}: not a saved DSPy program (JSON): {exc}") from exc
    if not isinstance(state, dict):
        raise PipelineError(f"{path}: not a saved DSPy program: expected a JSON object")
    meta = (state.get("metadata") or {}).get("pipec")
    return meta if isinstance(meta, dict) else None
