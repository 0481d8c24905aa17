"""What gets compiled: node kinds, the Pipeline base and the built-in pipelines.

This package imports neither mlflow, duckdb nor llama_cpp; heavy dependencies load where used.
"""

from programs.demo_pool import DemoSource, LivePool, PoolRow
from programs.errors import (
    BudgetExhaustedError,
    ConfigError,
    DatasetError,
    InputRejectedError,
    LMError,
    PipecError,
    PipelineError,
    StoreBusyError,
    StoreError,
    TrackingError,
    UserError,
)
from programs.loader import load_pipeline_class, make_pipeline
from programs.nodes import Classifier, CodeGen, Node, Writer
from programs.pipeline import Pipeline
from programs.retrieval import Retrieval

__all__ = [
    "BudgetExhaustedError",
    "Classifier",
    "CodeGen",
    "ConfigError",
    "DatasetError",
    "DemoSource",
    "InputRejectedError",
    "LMError",
    "LivePool",
    "Node",
    "PipecError",
    "Pipeline",
    "PipelineError",
    "PoolRow",
    "Retrieval",
    "StoreBusyError",
    "StoreError",
    "TrackingError",
    "UserError",
    "Writer",
    "load_pipeline_class",
    "make_pipeline",
]
