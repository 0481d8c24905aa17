from experiments.plots import confusion_png
from metrics.classification import classification_report


def test_confusion_png_is_a_png_even_with_japanese_labels():
    report = classification_report([("請求", "請求"), ("配送", "請求"), ("配送", None)], ["請求", "配送"])
    data = confusion_png(report, "classify (compiled)")
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 1000
