"""How runs are executed and recorded: LMs, datasets, compile/evaluate, MLflow tracking, the CLI."""

from experiments.compile import CompileOptions, compile_pipeline, render_prompts
from experiments.datasets import Dataset, load_dataset, split_dataset
from experiments.evaluate import EvalReport, ExampleResult, LMUsage, evaluate_program, lm_usage
from experiments.evaluate_run import EvaluateOptions, evaluate_pipeline
from experiments.lm import LMConfig, make_lm
from experiments.recording import Recorder
from experiments.runner import Trace, program_version, run_traced
from experiments.runs import list_runs
from experiments.tracking import RunTracker

__all__ = [
    "CompileOptions",
    "Dataset",
    "EvalReport",
    "EvaluateOptions",
    "ExampleResult",
    "LMConfig",
    "LMUsage",
    "Recorder",
    "RunTracker",
    "Trace",
    "compile_pipeline",
    "evaluate_pipeline",
    "evaluate_program",
    "list_runs",
    "lm_usage",
    "load_dataset",
    "make_lm",
    "program_version",
    "render_prompts",
    "run_traced",
    "split_dataset",
]
