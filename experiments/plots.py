"""Images for MLflow runs: the confusion matrix of a classifier node, as PNG bytes.

Drawn with Pillow (cells, counts, labels, a colour scale): a few milliseconds per image, where
matplotlib took half a second of CPU for the same figure, after the last LM call of a compile.
Text is drawn with an installed font that has Japanese glyphs when there is one
(:func:`cjk_font_path`), else with the DejaVu Sans that matplotlib ships.
"""

from __future__ import annotations

import functools
import glob
import io
import os
from typing import Any

from metrics.classification import ClassificationReport

__all__ = ["cjk_font_path", "confusion_png"]

# Fonts that draw Japanese (and Latin), most preferred first; the first one installed is used.
_CJK_FAMILIES = ("Noto Sans CJK JP", "Noto Sans JP", "IPAexGothic", "IPAGothic", "TakaoGothic",
                 "Noto Sans CJK SC", "WenQuanYi Zen Hei", "Droid Sans Fallback")
_CJK_FILES = ("NotoSansCJK-Regular.ttc", "NotoSansCJKjp-Regular.otf", "NotoSansJP-Regular.*", "ipaexg.ttf",
              "ipag.ttf", "TakaoGothic.ttf", "wqy-zenhei.ttc", "DroidSansFallbackFull.ttf")
_FONT_DIRS = ("/usr/share/fonts", "/usr/local/share/fonts", "~/.local/share/fonts", "~/.fonts",
              "/Library/Fonts", "/System/Library/Fonts", "C:/Windows/Fonts")

# matplotlib's "Blues" (ColorBrewer), light to dark.
_BLUES = ((247, 251, 255), (222, 235, 247), (198, 219, 239), (158, 202, 225), (107, 174, 214),
          (66, 146, 198), (33, 113, 181), (8, 81, 156), (8, 48, 107))
_CELL = 48  # pixels per matrix cell
_PAD = 10


@functools.cache
def cjk_font_path() -> str | None:
    """The file of an installed font that draws Japanese, or None (Debian: ``fonts-noto-cjk``).

    The usual font directories are searched first (milliseconds), then matplotlib's font list
    (a second to load, and cached on disk, so it misses fonts installed after it was built).
    """
    for directory in _FONT_DIRS:
        root = os.path.expanduser(directory)
        for pattern in _CJK_FILES:
            found = sorted(glob.glob(os.path.join(root, "**", pattern), recursive=True))
            if found:
                return found[0]
    from matplotlib import font_manager

    by_name: dict[str, str] = {}
    for font in sorted(font_manager.fontManager.ttflist, key=lambda f: f.weight not in (400, "normal", "regular")):
        by_name.setdefault(font.name, font.fname)  # the regular weight of each family first
    for family in _CJK_FAMILIES:
        if family in by_name:
            return by_name[family]
    return None


@functools.cache
def _font(size: int) -> Any:
    from PIL import ImageFont

    path = cjk_font_path()
    if path is None:
        import matplotlib

        path = os.path.join(matplotlib.get_data_path(), "fonts", "ttf", "DejaVuSans.ttf")
    try:
        return ImageFont.truetype(path, size)
    except OSError:  # an unreadable font file: Pillow's own
        return ImageFont.load_default(size)


def _blue(share: float) -> tuple[int, int, int]:
    """The colour of ``share`` (0..1) on the Blues scale."""
    position = min(max(share, 0.0), 1.0) * (len(_BLUES) - 1)
    low = int(position)
    high = min(low + 1, len(_BLUES) - 1)
    frac = position - low
    return tuple(round(a + (b - a) * frac) for a, b in zip(_BLUES[low], _BLUES[high], strict=True))  # type: ignore[return-value]


def _size(text: str, font: Any) -> tuple[int, int]:
    left, top, right, bottom = font.getbbox(text)
    return max(1, right - left), max(1, bottom - top)


def _rotated(text: str, font: Any, angle: float) -> Any:
    """``text`` in black on a transparent image, rotated ``angle`` degrees counter-clockwise."""
    from PIL import Image, ImageDraw

    width, height = _size(text, font)
    left, top, _, _ = font.getbbox(text)
    image = Image.new("LA", (width + 4, height + 4), (0, 0))
    ImageDraw.Draw(image).text((2 - left, 2 - top), text, font=font, fill=(0, 255))
    return image.rotate(angle, expand=True, resample=Image.Resampling.BICUBIC)


def confusion_png(report: ClassificationReport, title: str) -> bytes:
    """The confusion matrix as a PNG: gold labels down, predicted labels across, counts in cells,
    the cells coloured by count (a scale on the right), the title with macro-F1 and accuracy.

    Args:
        report: The classifier's report.
        title: The figure title (the node and the stage).
    """
    from PIL import Image, ImageDraw

    labels = list(report.confusion)
    counts = [[report.confusion[g][p] for p in labels] for g in labels]
    peak = max((c for row in counts for c in row), default=0)
    font, small, big = _font(13), _font(11), _font(14)
    lines = [title, f"macro-F1 {report.macro_f1:.3f} · accuracy {report.accuracy:.3f}"]

    n = len(labels)
    y_width = max((_size(label, font)[0] for label in labels), default=0)
    x_labels = [_rotated(label, font, 45) for label in labels]
    x_height = max((image.height for image in x_labels), default=0)
    axis_height = _size("predicted", font)[1]
    line_height = _size("Ag", big)[1] + 6
    gold = _rotated("gold", font, 90)
    scale_width = 16 + _PAD + max(_size(str(peak), small)[0], _size("0", small)[0])

    left = _PAD + gold.width + _PAD + y_width + _PAD
    top = _PAD + line_height * len(lines) + _PAD
    grid = n * _CELL
    width = max(left + grid + 2 * _PAD + scale_width + _PAD,
                max(_size(line, big)[0] for line in lines) + 2 * _PAD)
    height = top + grid + _PAD + x_height + _PAD + axis_height + _PAD
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)

    for i, line in enumerate(lines):
        draw.text((width // 2, _PAD + i * line_height), line, font=big, fill="black", anchor="ma")
    for i, row in enumerate(counts):
        for j, count in enumerate(row):
            x, y = left + j * _CELL, top + i * _CELL
            share = count / peak if peak else 0.0
            draw.rectangle((x, y, x + _CELL - 1, y + _CELL - 1), fill=_blue(share))
            draw.text((x + _CELL // 2, y + _CELL // 2), str(count), font=font, anchor="mm",
                      fill="white" if count > peak / 2 else "black")
    draw.rectangle((left - 1, top - 1, left + grid, top + grid), outline="black")
    for i, label in enumerate(labels):  # gold labels, right-aligned beside their row
        draw.text((left - _PAD, top + i * _CELL + _CELL // 2), label, font=font, fill="black", anchor="rm")
    for j, rotated in enumerate(x_labels):  # predicted labels, at 45 degrees, ending under their column
        x = left + j * _CELL + _CELL // 2 + 4 - rotated.width
        image.paste((0, 0, 0), (x, top + grid + 4), rotated.getchannel("A"))
    draw.text((left + grid // 2, height - _PAD), "predicted", font=font, fill="black", anchor="md")
    image.paste((0, 0, 0), (_PAD, top + (grid - gold.height) // 2), gold.getchannel("A"))

    scale_left = left + grid + 2 * _PAD  # the colour scale: 0 at the bottom, the peak count at the top
    for y in range(grid):
        draw.line((scale_left, top + y, scale_left + 15, top + y), fill=_blue(1 - y / max(grid - 1, 1)))
    draw.rectangle((scale_left - 1, top - 1, scale_left + 16, top + grid), outline="black")
    draw.text((scale_left + 16 + 4, top), str(peak), font=small, fill="black", anchor="lt")
    draw.text((scale_left + 16 + 4, top + grid), "0", font=small, fill="black", anchor="lb")

    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False, compress_level=6)
    return buffer.getvalue()
