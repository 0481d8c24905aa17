from experiments.plots import confusion_png
from metrics.classification import classification_report


def test_confusion_png_is_a_png_even_with_japanese_labels():
    report = classification_report([("請求", "請求"), ("配送", "請求"), ("配送", None)], ["請求", "配送"])
    data = confusion_png(report, "classify (compiled)")
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 1000


def test_japanese_labels_draw_with_a_font_that_has_their_glyphs():
    import pytest
    from matplotlib.ft2font import FT2Font

    from experiments.plots import cjk_font_path

    path = cjk_font_path()
    if path is None:
        pytest.skip("no CJK font installed: apt-get install -y fonts-noto-cjk (.ci/run does)")
    font = FT2Font(path)
    assert all(font.get_char_index(ord(c)) for c in "請求配送返金アカウント")
    assert "Bold" not in path  # the regular weight when the family has several
