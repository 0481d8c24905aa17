"""Images for MLflow runs: the confusion matrix of a classifier node, as PNG bytes.

matplotlib loads lazily and draws through its Agg canvas directly (no pyplot, so no global
figure state and no GUI backend, whatever the environment's ``MPLBACKEND``).
"""

from __future__ import annotations

import io
import warnings

from metrics.classification import ClassificationReport

__all__ = ["confusion_png"]


def confusion_png(report: ClassificationReport, title: str) -> bytes:
    """The confusion matrix as a PNG: gold labels down, predicted labels across, counts in cells.

    Args:
        report: The classifier's report.
        title: The figure title (the node and the stage).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    with warnings.catch_warnings():
        # Labels in a script the default font lacks (Japanese) draw as boxes; the warning is noise.
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
        figure.tight_layout()
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png")
    return buffer.getvalue()
