import pytest

from metrics.classification import MISSING_LABEL, classification_report, confusion_matrix

PAIRS = [("billing", "billing"), ("billing", "refund"), ("refund", "refund"), ("refund", "refund"),
         ("shipping", "billing"), ("shipping", None)]


def test_confusion_matrix_counts_gold_by_predicted():
    matrix = confusion_matrix(PAIRS, ["billing", "refund", "shipping"])
    assert list(matrix) == ["billing", "refund", "shipping", MISSING_LABEL]
    assert matrix["billing"] == {"billing": 1, "refund": 1, "shipping": 0, MISSING_LABEL: 0}
    assert matrix["shipping"][MISSING_LABEL] == 1 and matrix["shipping"]["billing"] == 1


def test_per_label_scores_by_hand():
    report = classification_report(PAIRS, ["billing", "refund", "shipping", "account"])
    billing, refund, shipping = (report.labels[k] for k in ("billing", "refund", "shipping"))
    assert (billing.precision, billing.recall, billing.f1) == (0.5, 0.5, 0.5)
    assert refund.precision == pytest.approx(2 / 3) and refund.recall == 1.0 and refund.f1 == pytest.approx(0.8)
    assert (shipping.precision, shipping.recall, shipping.f1, shipping.support) == (0.0, 0.0, 0.0, 2)
    # account never occurs, so it is left out of macro-F1; (none) was predicted once and counts with F1 0
    assert report.labels["account"].support == 0
    assert report.macro_f1 == pytest.approx((0.5 + 0.8 + 0.0 + 0.0) / 4)
    assert report.accuracy == pytest.approx(3 / 6) and report.examples == 6


def test_as_dict_is_json_ready():
    data = classification_report([("a", "a")], ["a", "b"]).as_dict()
    assert data["labels"]["a"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1, "predicted": 1}
    assert data["macro_f1"] == 1.0 and data["confusion"] == {"a": {"a": 1, "b": 0}, "b": {"a": 0, "b": 0}}


def test_empty_input():
    report = classification_report([], ["a", "b"])
    assert report.macro_f1 == 0.0 and report.accuracy == 0.0
