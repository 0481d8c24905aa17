"""How programs improve: a registry over DSPy's teleprompters, with budgets and settings, and
pipec's own textual-feedback optimizers (protegi, opro, ape, evoprompt, feedback,
human, query-aware)."""

from optimizers.ape import APE
from optimizers.budget import Budget, BudgetStop
from optimizers.evoprompt import EvoPrompt
from optimizers.feedback import FeedbackRewrite
from optimizers.human import HumanFeedback
from optimizers.knn import RetrievalFewShot
from optimizers.opro import OPRO
from optimizers.params import parse_params, parse_value
from optimizers.protegi import ProTeGi
from optimizers.query_aware import QueryAware
from optimizers.registry import (
    OPTIMIZERS,
    OptimizerSequence,
    OptimizerSpec,
    PreparedOptimizer,
    prepare_optimizer,
    spec_for,
)
from optimizers.textual import TextualOptimizer

__all__ = ["APE", "OPRO", "OPTIMIZERS", "Budget", "BudgetStop", "EvoPrompt", "FeedbackRewrite", "HumanFeedback",
           "OptimizerSequence", "OptimizerSpec", "PreparedOptimizer", "ProTeGi", "QueryAware", "RetrievalFewShot",
           "TextualOptimizer", "parse_params", "parse_value", "prepare_optimizer", "spec_for"]
