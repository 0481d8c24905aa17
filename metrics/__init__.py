"""How output is judged: Verdicts, validators per node kind, and the pipeline metric."""

from metrics.pipeline_metric import PipelineMetric
from metrics.validators import LabelMatch, LengthBounds, SqlResultMatch, validators_for
from metrics.verdict import Verdict, combine

__all__ = [
    "LabelMatch",
    "LengthBounds",
    "PipelineMetric",
    "SqlResultMatch",
    "Verdict",
    "combine",
    "validators_for",
]
