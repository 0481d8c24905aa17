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
from programs.trace import NodeCall, capture, node_calls

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
    "NodeCall",
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
    "capture",
    "load_pipeline_class",
    "make_pipeline",
    "node_calls",
]
