"""What gets compiled: node kinds, the Pipeline base and the built-in pipelines.

This package imports neither mlflow, duckdb nor llama_cpp; heavy dependencies load where used.
"""

from programs.demo_pool import DemoSource, LivePool, PoolRow
from programs.errors import (
    BudgetExhaustedError,
    ConfigError,
    DatasetError,
    InputRejectedError,
    LMAuthError,
    LMBadRequestError,
    LMConfigError,
    LMError,
    LMNotFoundError,
    LMRateLimitError,
    LMServerError,
    LMTimeoutError,
    LMUnreachableError,
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
    "LMAuthError",
    "LMBadRequestError",
    "LMConfigError",
    "LMError",
    "LMNotFoundError",
    "LMRateLimitError",
    "LMServerError",
    "LMTimeoutError",
    "LMUnreachableError",
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
