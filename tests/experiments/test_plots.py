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


def test_cells_are_coloured_by_count_and_the_labels_are_drawn():
    import io

    from PIL import Image

    from experiments import plots

    # gold 請求: 3 right; gold 配送: 1 right, 2 predicted 請求
    pairs = [("請求", "請求")] * 3 + [("配送", "配送")] + [("配送", "請求")] * 2
    report = classification_report(pairs, ["請求", "配送"])
    image = Image.open(io.BytesIO(confusion_png(report, "classify (compiled)"))).convert("RGB")
    labels = list(report.confusion)
    n = len(labels)
    # The grid: the block of cells, found from its black frame's inner corner at the bottom right.
    width, height = image.size
    assert width > n * plots._CELL and height > n * plots._CELL

    def darkness(rgb):
        return 765 - sum(rgb)

    # Every cell's fill is sampled near its top-left corner (away from the count drawn in its middle).
    pixels = image.load()
    frame = next((x, y) for y in range(height) for x in range(width) if pixels[x, y] == (0, 0, 0)
                 and pixels[x + 1, y + 1] != (0, 0, 0) and pixels[x + 1, y] == (0, 0, 0)
                 and pixels[x, y + 1] == (0, 0, 0))
    left, top = frame[0] + 1, frame[1] + 1
    fills = {(g, p): pixels[left + j * plots._CELL + 3, top + i * plots._CELL + 3]
             for i, g in enumerate(labels) for j, p in enumerate(labels)}
    counts = {(g, p): report.confusion[g][p] for g in labels for p in labels}
    ranked = sorted(counts, key=lambda key: counts[key])
    assert [darkness(fills[key]) for key in ranked] == sorted(darkness(fills[key]) for key in ranked)
    assert fills[("請求", "請求")] == plots._blue(1.0) and fills[("請求", "配送")] == plots._blue(0.0)
    # Labels left of the grid: dark text pixels beside each row.
    for i in range(2):
        row = [pixels[x, top + i * plots._CELL + plots._CELL // 2] for x in range(left - 2)]
        assert any(darkness(p) > 500 for p in row)
