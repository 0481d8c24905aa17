"""How programs improve: a registry over DSPy's teleprompters, with budgets and settings."""

from optimizers.knn import RetrievalFewShot
from optimizers.params import parse_params, parse_value
from optimizers.registry import OPTIMIZERS, OptimizerSpec, PreparedOptimizer, prepare_optimizer, spec_for

__all__ = ["OPTIMIZERS", "OptimizerSpec", "PreparedOptimizer", "RetrievalFewShot", "parse_params", "parse_value",
           "prepare_optimizer", "spec_for"]
