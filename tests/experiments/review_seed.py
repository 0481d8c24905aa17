"""A small store for the review and alignment tests: triage-like traces (classify -> reply) with
rule verdicts, judge verdicts on the replies and a few human labels, some disagreeing with the judge.

Everything goes in through the store's own API (``append_traces``, ``add_verdicts``,
``add_label``), as ``pipec run`` and the review page write it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from experiments.runner import Trace
from experiments.store import Store
from metrics.judge import rubric_id
from metrics.verdict import Verdict
from programs.trace import NodeCall

RUBRIC = "The reply is polite, concrete and in the customer's language."
JUDGE = rubric_id(RUBRIC)
T0 = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)

MESSAGES = [
    ("I was charged twice for my order", "billing", "We are sorry. We refunded the second charge today."),
    ("注文した商品がまだ届きません", "shipping", "ご不便をおかけして申し訳ありません。明日お届けします。"),
    ("How do I reset my password?", "account", "Click 'Forgot password' on the login page to reset it."),
    ("The app crashes when I open settings", "technical", "ok"),
    ("返金はいつになりますか", "refund", "返金は三営業日以内に処理されます。"),
    ("My package arrived damaged", "shipping", "Sorry about that! We will send a replacement tomorrow."),
    ("請求書の金額が間違っています", "billing", "確認して正しい請求書を本日お送りします。"),
    ("I cannot log in since yesterday", "account", "Please try again later."),
    ("Where is my refund for order 1234?", "refund", "Your refund for order 1234 was sent on Monday."),
    ("アプリが起動しません", "technical", "再インストールをお試しください。それでも駄目ならご連絡ください。"),
]


@dataclass
class Seeded:
    """What was seeded: trace ids in creation order and the traces' roles."""

    path: Path
    judge: str = JUDGE
    trace_ids: list[str] = field(default_factory=list)
    disagreements: list[str] = field(default_factory=list)
    agreed: list[str] = field(default_factory=list)
    scores: dict[str, float] = field(default_factory=dict)

    def reply_call(self, trace_id: str) -> str:
        return f"{trace_id}/1"


def _trace(i: int, message: str, category: str, reply: str) -> Trace:
    at = T0 + timedelta(hours=i)
    calls = [
        NodeCall(node="classify", kind="classifier", position=0, inputs={"message": message},
                 outputs={"category": category}, output_field="category", seconds=0.1, lm_calls=1,
                 prompt_tokens=50, completion_tokens=3),
        NodeCall(node="reply", kind="writer", position=1, inputs={"message": message, "category": category},
                 outputs={"reply": reply}, output_field="reply", seconds=0.2, lm_calls=1, prompt_tokens=80,
                 completion_tokens=20),
    ]
    return Trace(trace_id=f"t{i:02d}", pipeline="triage", program_version="v1", inputs={"message": message},
                 prediction={"category": category, "reply": reply}, calls=calls, started_at=at)


def seed_store(path: Path, *, disagree: tuple[int, ...] = (3, 7, 1), agree: tuple[int, ...] = (0, 5),
               judge_fails: tuple[int, ...] = (1, 3, 7, 9)) -> Seeded:
    """Ten traces t00..t09, an hour apart. The judge fails the replies of ``judge_fails``; a human
    (``seed``) labels ``disagree`` opposite to the judge and ``agree`` like it."""
    seeded = Seeded(path)
    traces = [_trace(i, *row) for i, row in enumerate(MESSAGES)]
    rule = {}
    for i, t in enumerate(traces):
        words = len(t.calls[1].outputs["reply"].split())
        reply_score = 0.2 if words < 2 and i == 3 else 0.4 if i == 7 else 1.0
        rule[t.trace_id] = {"classify": {"label_match": Verdict.ok()},
                            "reply": {"length": Verdict(reply_score, reply_score >= 0.5,
                                                        "" if reply_score >= 0.5 else "the reply is too short")}}
        seeded.scores[t.trace_id] = reply_score
    with Store.open(path) as store:
        store.append_traces(traces, rule, source="run")
        judge_rows = []
        for i, t in enumerate(traces):
            fails = i in judge_fails
            judge_rows.append({"trace_id": t.trace_id, "call_id": f"{t.trace_id}/1", "node": "reply",
                               "validator": JUDGE, "source": "judge", "score": 0.0 if fails else 1.0,
                               "passed": not fails, "counted": True,
                               "feedback": "the judge failed it: 丁寧さが足りません" if fails else "",
                               "details": {"judge": JUDGE, "judge_passed": not fails},
                               "created_at": t.started_at + timedelta(minutes=1)})
        store.add_verdicts(judge_rows)
        for i in (*disagree, *agree):
            t = traces[i]
            judge_passed = i not in judge_fails
            human = (not judge_passed) if i in disagree else judge_passed
            store.add_label(t.trace_id, call_id=f"{t.trace_id}/1", passed=human, validator=JUDGE, reviewer="seed",
                            comment="seeded", created_at=t.started_at + timedelta(minutes=5))
    seeded.trace_ids = [t.trace_id for t in traces]
    seeded.disagreements = [traces[i].trace_id for i in disagree]
    seeded.agreed = [traces[i].trace_id for i in agree]
    return seeded


def rows(path: Path, sql: str, params: list[Any] | None = None) -> list[dict[str, Any]]:
    with Store.open(path, read_only=True) as store:
        return store.query(sql, params or [])


REPLIER = f'''
import dspy
from programs.nodes import Writer
from programs.pipeline import Pipeline

RUBRIC = {RUBRIC!r}


class Replier(Pipeline):
    inputs = ("message",)
    gold = {{"reply": "reply"}}

    def __init__(self):
        super().__init__()
        self.reply = Writer({{"message": "a customer message"}}, output="reply",
                            rules={{"rubric": RUBRIC, "judge_mode": "binary"}})

    def forward(self, message):
        return dspy.Prediction(reply=self.reply(message=message).reply)
'''
"""A one-writer pipeline whose reply node has the seeded judge's rubric (binary), as a file's text."""


def write_replier(directory: Path) -> str:
    """Writes :data:`REPLIER` to ``directory/replier.py``; returns its pipeline spec."""
    path = directory / "replier.py"
    path.write_text(REPLIER, encoding="utf-8")
    return f"{path}:Replier"
