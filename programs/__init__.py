"""What gets compiled: node kinds, the Pipeline base and the built-in pipelines.

This package imports neither mlflow, duckdb nor llama_cpp; heavy dependencies load where used.
"""

from programs.errors import (
    BudgetExhaustedError,
    ConfigError,
    DatasetError,
    LMError,
    PipecError,
    PipelineError,
    TrackingError,
    UserError,
)
from programs.loader import load_pipeline_class, make_pipeline
from programs.nodes import Classifier, CodeGen, Node, Writer
from programs.pipeline import Pipeline

__all__ = [
    "BudgetExhaustedError",
    "Classifier",
    "CodeGen",
    "ConfigError",
    "DatasetError",
    "LMError",
    "Node",
    "PipecError",
    "Pipeline",
    "PipelineError",
    "TrackingError",
    "UserError",
    "Writer",
    "load_pipeline_class",
    "make_pipeline",
]
