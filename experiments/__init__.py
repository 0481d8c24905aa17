"""How runs are executed and recorded: LMs, datasets, compile/evaluate, MLflow tracking, the CLI.

Names load on first use (``from experiments import compile_pipeline`` imports only what that
needs), so a process that wants one piece, such as the tracker's writer process
(``experiments.tracking_writer``), does not import DSPy, DuckDB and the rest. The preflight
check is ``experiments.preflight.preflight``: a name the package loads on first use cannot share
its name with a module of the package.
"""

import importlib as _importlib

_WHERE = {
    "CompileOptions": "experiments.compile",
    "Dataset": "experiments.datasets",
    "EvalReport": "experiments.evaluate",
    "EvaluateOptions": "experiments.evaluate_run",
    "ExampleResult": "experiments.evaluate",
    "LMConfig": "experiments.lm",
    "LMUsage": "experiments.evaluate",
    "LabelledJudgeDemos": "experiments.alignment",
    "PipecLM": "experiments.lm",
    "QueueFilters": "experiments.review",
    "Recorder": "experiments.recording",
    "ReviewInput": "experiments.review",
    "RunTracker": "experiments.tracking",
    "Store": "experiments.store",
    "StoreFilter": "experiments.store",
    "Trace": "experiments.runner",
    "align_judge": "experiments.alignment",
    "cohen_kappa": "experiments.alignment",
    "compile_pipeline": "experiments.compile",
    "evaluate_pipeline": "experiments.evaluate_run",
    "evaluate_program": "experiments.evaluate",
    "export_rows": "experiments.store",
    "judge_agreement": "experiments.alignment",
    "list_runs": "experiments.runs",
    "lm_usage": "experiments.evaluate",
    "load_dataset": "experiments.datasets",
    "make_lm": "experiments.lm",
    "mark_killed_runs": "experiments.liveness",
    "program_version": "experiments.runner",
    "queue": "experiments.review",
    "render_prompts": "experiments.compile",
    "resume_options": "experiments.resume",
    "run_traced": "experiments.runner",
    "save_review": "experiments.review",
    "split_dataset": "experiments.datasets",
    "translate_lm_error": "experiments.lm_errors",
}

__all__ = sorted(_WHERE)  # every name the package hands on, each loaded on first use


def __getattr__(name: str) -> object:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'experiments' has no attribute {name!r}")
    value = getattr(_importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
