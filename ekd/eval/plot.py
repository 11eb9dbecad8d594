"""ROC plots (PNG) of verification results, drawn with matplotlib's non-interactive Agg backend."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np


def plot_roc(
    curves: Mapping[str, tuple[np.ndarray, np.ndarray]],
    path: str | os.PathLike,
    title: str = "ROC",
    min_fpr: float = 1e-6,
) -> Path:
    """Draw TPR against log-scaled FPR for each named (fpr, tpr) curve and save a PNG at ``path``.

    Points with FPR = 0 cannot be shown on a log axis; they are drawn at ``min_fpr``.
    """
    import matplotlib

    matplotlib.use("Agg", force=True)  # headless: never needs a display
    import matplotlib.pyplot as plt

    if not curves:
        raise ValueError("plot_roc needs at least one curve")
    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=120)
    try:
        for name, (fpr, tpr) in curves.items():
            fpr = np.maximum(np.asarray(fpr, dtype=np.float64), min_fpr)
            ax.plot(fpr, np.asarray(tpr, dtype=np.float64), lw=1.2, label=name)
        ax.set_xscale("log")
        ax.set_xlim(min_fpr, 1.0)
        ax.set_ylim(0.0, 1.01)
        ax.set_xlabel("False positive rate")
        ax.set_ylabel("True positive rate")
        ax.set_title(title)
        ax.grid(True, which="both", linestyle="--", linewidth=0.5)
        ax.legend(loc="lower right", fontsize=8)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, format="png", bbox_inches="tight")
    finally:
        plt.close(fig)
    return path
