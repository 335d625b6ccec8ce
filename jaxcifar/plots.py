"""Report figures: per-epoch curves and the confusion matrix, saved atomically as PNG.

matplotlib is imported here with the Agg backend, so nothing needs a display.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from jaxcifar.atomic import atomic_path  # noqa: E402


def _save(fig: plt.Figure, path: str | os.PathLike[str]) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight", format="png")
    plt.close(fig)


def plot_curves(
    path: str | os.PathLike[str],
    epochs: Sequence[int],
    series: Mapping[str, Sequence[float]],
    *,
    ylabel: str,
    title: str,
) -> None:
    """One line per entry of `series` (label -> one value per epoch) against `epochs`."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, values in series.items():
        ax.plot(epochs, values, marker="o", label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    _save(fig, path)


def plot_confusion_matrix(
    path: str | os.PathLike[str],
    matrix: np.ndarray,
    class_names: Sequence[str],
    *,
    title: str = "Confusion matrix",
) -> None:
    """Heatmap of `matrix` (K, K) int counts, rows true class, columns predicted, counts written in."""
    matrix = np.asarray(matrix)
    k = len(class_names)
    fig, ax = plt.subplots(figsize=(1.0 + 0.75 * k, 0.75 * k))
    image = ax.imshow(matrix, cmap="Blues")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(k), class_names, rotation=45, ha="right")
    ax.set_yticks(range(k), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    threshold = matrix.max() / 2 if matrix.size else 0
    for row in range(k):
        for col in range(k):
            ax.text(
                col, row, str(int(matrix[row, col])), ha="center", va="center", fontsize=7,
                color="white" if matrix[row, col] > threshold else "black",
            )  # fmt: skip
    _save(fig, path)
