"""Images for MLflow runs: the confusion matrix of a classifier node, as PNG bytes.

matplotlib loads lazily and draws through its Agg canvas directly (no pyplot, so no global
figure state and no GUI backend, whatever the environment's ``MPLBACKEND``).
"""

from __future__ import annotations

import functools
import glob
import io
import os
import warnings

from metrics.classification import ClassificationReport

__all__ = ["cjk_font_path", "confusion_png"]

# Fonts that draw Japanese (and Latin), most preferred first; the first one installed is used.
_CJK_FAMILIES = ("Noto Sans CJK JP", "Noto Sans JP", "IPAexGothic", "IPAGothic", "TakaoGothic",
                 "Noto Sans CJK SC", "WenQuanYi Zen Hei", "Droid Sans Fallback")
_CJK_FILES = ("NotoSansCJK-Regular.ttc", "NotoSansCJKjp-Regular.otf", "NotoSansJP-Regular.*", "ipaexg.ttf",
              "ipag.ttf", "TakaoGothic.ttf", "wqy-zenhei.ttc", "DroidSansFallbackFull.ttf")
_FONT_DIRS = ("/usr/share/fonts", "/usr/local/share/fonts", "~/.local/share/fonts", "~/.fonts",
              "/Library/Fonts", "/System/Library/Fonts", "C:/Windows/Fonts")


@functools.cache
def cjk_font_path() -> str | None:
    """The file of an installed font that draws Japanese, or None (Debian: ``fonts-noto-cjk``).

    Matplotlib's font list is cached on disk and misses fonts installed after it was built, so
    the usual font directories are searched too.
    """
    from matplotlib import font_manager

    by_name: dict[str, str] = {}
    for font in sorted(font_manager.fontManager.ttflist, key=lambda f: f.weight not in (400, "normal", "regular")):
        by_name.setdefault(font.name, font.fname)  # the regular weight of each family first
    for family in _CJK_FAMILIES:
        if family in by_name:
            return by_name[family]
    for directory in _FONT_DIRS:
        root = os.path.expanduser(directory)
        for pattern in _CJK_FILES:
            found = sorted(glob.glob(os.path.join(root, "**", pattern), recursive=True))
            if found:
                return found[0]
    return None


def _use_font(figure: object, path: str) -> None:
    """Draws every text of ``figure`` with the font file at ``path`` (per text: no global rcParams)."""
    from matplotlib.font_manager import FontProperties
    from matplotlib.text import Text

    for text in figure.findobj(Text):  # type: ignore[attr-defined]
        text.set_fontproperties(FontProperties(fname=path, size=text.get_fontsize(), weight=text.get_fontweight()))


def confusion_png(report: ClassificationReport, title: str) -> bytes:
    """The confusion matrix as a PNG: gold labels down, predicted labels across, counts in cells.

    Args:
        report: The classifier's report.
        title: The figure title (the node and the stage).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    with warnings.catch_warnings():
        # Without a CJK font installed, Japanese labels draw as boxes; the glyph warning is noise then.
        warnings.simplefilter("ignore")
        labels = list(report.confusion)
        counts = [[report.confusion[g][p] for p in labels] for g in labels]
        size = max(4.0, 0.6 * len(labels) + 2.5)
        figure = Figure(figsize=(size, size), dpi=100)
        FigureCanvasAgg(figure)
        axes = figure.add_subplot()
        image = axes.imshow(counts, cmap="Blues")
        axes.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
        axes.set_yticks(range(len(labels)), labels)
        axes.set_xlabel("predicted")
        axes.set_ylabel("gold")
        axes.set_title(f"{title}\nmacro-F1 {report.macro_f1:.3f} · accuracy {report.accuracy:.3f}")
        peak = max((c for row in counts for c in row), default=0)
        for i, row in enumerate(counts):
            for j, count in enumerate(row):
                axes.text(j, i, str(count), ha="center", va="center", color="white" if count > peak / 2 else "black")
        figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04)
        font = cjk_font_path()
        if font is not None:
            _use_font(figure, font)
        figure.tight_layout()
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png")
    return buffer.getvalue()
