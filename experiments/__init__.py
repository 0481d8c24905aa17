"""How runs are executed and recorded: LMs, datasets, compile/evaluate, MLflow tracking, the CLI."""

from experiments.alignment import LabelledJudgeDemos, align_judge, cohen_kappa, judge_agreement
from experiments.compile import CompileOptions, compile_pipeline, render_prompts
from experiments.datasets import Dataset, load_dataset, split_dataset
from experiments.evaluate import EvalReport, ExampleResult, LMUsage, evaluate_program, lm_usage
from experiments.evaluate_run import EvaluateOptions, evaluate_pipeline
from experiments.liveness import mark_killed_runs
from experiments.lm import LMConfig, PipecLM, make_lm
from experiments.lm_errors import translate_lm_error
from experiments.preflight import preflight
from experiments.recording import Recorder
from experiments.resume import resume_options
from experiments.review import QueueFilters, ReviewInput, queue, save_review
from experiments.runner import Trace, program_version, run_traced
from experiments.runs import list_runs
from experiments.store import Store, StoreFilter, export_rows
from experiments.tracking import RunTracker

__all__ = [
    "CompileOptions",
    "Dataset",
    "EvalReport",
    "EvaluateOptions",
    "ExampleResult",
    "LMConfig",
    "LMUsage",
    "LabelledJudgeDemos",
    "PipecLM",
    "QueueFilters",
    "Recorder",
    "ReviewInput",
    "RunTracker",
    "Store",
    "StoreFilter",
    "Trace",
    "align_judge",
    "cohen_kappa",
    "compile_pipeline",
    "evaluate_pipeline",
    "evaluate_program",
    "export_rows",
    "judge_agreement",
    "list_runs",
    "lm_usage",
    "load_dataset",
    "make_lm",
    "mark_killed_runs",
    "preflight",
    "program_version",
    "queue",
    "render_prompts",
    "resume_options",
    "run_traced",
    "save_review",
    "split_dataset",
    "translate_lm_error",
]
