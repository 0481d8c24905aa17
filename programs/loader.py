"""Finds a pipeline by built-in name or by ``path/to/file.py:ClassName``."""

from __future__ import annotations

import difflib
import hashlib
import importlib.util
import sys
from pathlib import Path

from programs.errors import PipelineError
from programs.pipeline import Pipeline

__all__ = ["load_pipeline_class", "make_pipeline"]


def _builtins() -> dict[str, type[Pipeline]]:
    from programs.builtin import BUILTINS  # the built-ins import duckdb helpers lazily

    return BUILTINS


def load_pipeline_class(spec: str) -> type[Pipeline]:
    """Resolves ``spec`` to a Pipeline subclass.

    Args:
        spec: A built-in name (``triage``, ``sql``) or ``path/to/file.py:ClassName``.

    Raises:
        PipelineError: When the name is unknown, the file is missing or fails to import, or the
            class is not a Pipeline subclass. The message lists the valid choices.
    """
    builtins = _builtins()
    if ":" not in spec:
        if spec in builtins:
            return builtins[spec]
        close = difflib.get_close_matches(spec, builtins, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise PipelineError(f"unknown pipeline {spec!r}.{hint} Choose a built-in ({', '.join(builtins)}) "
                            "or give path/to/file.py:ClassName")
    file_part, _, class_name = spec.rpartition(":")
    path = Path(file_part).expanduser()
    if not path.is_file():
        raise PipelineError(f"{file_part}: pipeline file not found")
    # A stable, file-specific module name keeps two user files with the same stem apart.
    module_name = f"pipec_user_{path.stem}_{hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:8]}"
    module_spec = importlib.util.spec_from_file_location(module_name, path)
    if module_spec is None or module_spec.loader is None:
        raise PipelineError(f"{file_part}: cannot be imported as a Python module")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_name] = module
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(module_name, None)
        raise PipelineError(f"{file_part}: import failed: {type(exc).__name__}: {exc}") from exc
    cls = getattr(module, class_name, None)
    if cls is None:
        found = sorted(n for n, v in vars(module).items()
                       if isinstance(v, type) and issubclass(v, Pipeline) and v is not Pipeline)
        raise PipelineError(f"{file_part}: no class {class_name!r}; pipelines in the file: {found or 'none'}")
    if not (isinstance(cls, type) and issubclass(cls, Pipeline)):
        raise PipelineError(f"{file_part}:{class_name} is not a subclass of programs.Pipeline")
    return cls


def make_pipeline(spec: str) -> Pipeline:
    """Instantiates the pipeline ``spec`` names and checks its declaration."""
    cls = load_pipeline_class(spec)
    try:
        pipeline = cls()
    except PipelineError:
        raise
    except Exception as exc:
        raise PipelineError(f"{spec}: constructing the pipeline failed: {type(exc).__name__}: {exc}") from exc
    pipeline.check_declaration()
    return pipeline
