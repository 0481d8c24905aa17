"""The Banking77 benchmark data: the ``intents6`` subset split into train/dev with a fixed seed,
and the one-node intent pipeline evaluated on it.

The data lives outside the project (``../shared/datasets/banking77`` beside the checkout, or
``$PIPEC_BANKING77``); the project never copies it.
"""

from __future__ import annotations

import csv
import json
import os
import random
from pathlib import Path

import dspy

from programs import Classifier, DatasetError, Pipeline

__all__ = ["INTENTS6", "IntentPipeline", "dataset_dir", "load_split"]

INTENTS6 = (
    "card_arrival",
    "exchange_rate",
    "lost_or_stolen_card",
    "pin_blocked",
    "top_up_failed",
    "transfer_not_received_by_recipient",
)


def dataset_dir() -> Path:
    """Where the Banking77 files are: ``$PIPEC_BANKING77``, else ``../shared/datasets/banking77``."""
    override = os.environ.get("PIPEC_BANKING77")
    path = Path(override) if override else Path(__file__).resolve().parents[2] / "shared" / "datasets" / "banking77"
    if not (path / "train.csv").is_file():
        raise DatasetError(f"Banking77 not found at {path}: set PIPEC_BANKING77 to the folder holding train.csv")
    return path


class IntentPipeline(Pipeline):
    """One classifier node: a bank customer's message -> its intent."""

    inputs = ("text",)
    gold = {"intent": "label"}

    def __init__(self, labels: tuple[str, ...] = INTENTS6) -> None:
        super().__init__()
        self.intent = Classifier(
            {"text": "a bank customer's message"},
            output="label",
            labels=labels,
            instructions="Classify the bank customer's message into its intent.",
        )

    def forward(self, text: str) -> dspy.Prediction:
        return dspy.Prediction(label=self.intent(text=text).label)


def load_split(subset: str = "intents6", *, seed: int = 0, dev_per_label: int = 20
               ) -> tuple[list[dspy.Example], list[dspy.Example], tuple[str, ...]]:
    """The subset's rows split into (train, dev, labels): ``dev_per_label`` dev rows per intent,
    the rest train, chosen by a seeded shuffle. Same seed, same split, on any machine."""
    root = dataset_dir()
    if subset == "intents6":
        labels = INTENTS6
    elif subset == "intents77":
        labels = tuple(json.loads((root / "categories.json").read_text(encoding="utf-8")))
    else:
        raise DatasetError(f"unknown Banking77 subset {subset!r}; choose intents6 or intents77")
    by_label: dict[str, list[str]] = {label: [] for label in labels}
    with (root / "train.csv").open(encoding="utf-8", newline="") as handle:
        for row in csv.DictReader(handle):
            if row["category"] in by_label:
                by_label[row["category"]].append(row["text"])
    rng = random.Random(seed)
    train, dev = [], []
    for label in labels:
        texts = sorted(by_label[label])
        rng.shuffle(texts)
        dev += [dspy.Example(text=t, label=label).with_inputs("text") for t in texts[:dev_per_label]]
        train += [dspy.Example(text=t, label=label).with_inputs("text") for t in texts[dev_per_label:]]
    rng.shuffle(train)
    rng.shuffle(dev)
    return train, dev, labels
