"""How output is judged: Verdicts, validators per node kind (rule checks, LLM judges, SQL
execution), input guards, classifier statistics, and the pipeline metric."""

from metrics.classification import ClassificationReport, classification_report, confusion_matrix
from metrics.guards import Guarded, GuardReport, Guards, InputLanguage, MaxLength, NoPII, NoPromptInjection, NotEmpty
from metrics.judge import JudgeDemoSource, LLMJudge, judge_examples, rubric_id
from metrics.language import detect_language
from metrics.pipeline_metric import PipelineMetric
from metrics.sql_checks import SqlResultMatch, analyze_sql
from metrics.validators import RULES, LabelMatch, validators_for
from metrics.verdict import Verdict, combine
from metrics.writer_rules import GENERIC_PROSE, Format, Language, LengthBounds, Phrases

__all__ = [
    "GENERIC_PROSE",
    "RULES",
    "ClassificationReport",
    "Format",
    "GuardReport",
    "Guarded",
    "Guards",
    "InputLanguage",
    "JudgeDemoSource",
    "LLMJudge",
    "LabelMatch",
    "Language",
    "LengthBounds",
    "MaxLength",
    "NoPII",
    "NoPromptInjection",
    "NotEmpty",
    "Phrases",
    "PipelineMetric",
    "SqlResultMatch",
    "Verdict",
    "analyze_sql",
    "classification_report",
    "combine",
    "confusion_matrix",
    "detect_language",
    "judge_examples",
    "rubric_id",
    "validators_for",
]
