"""Report figures, saved atomically as PNG.

Figures are plain `matplotlib.figure.Figure`s rendered by Agg, never pyplot: no display is
needed and no global figure state is kept between calls.
"""

from __future__ import annotations

import math
import os
import re
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from jaxcifar.atomic import atomic_path


# Matplotlib's warning of a character its font lacks: "Glyph 26412 (\N{...}) missing from
# font(s) DejaVu Sans.", given once per drawing pass and naming no figure.
_MISSING_GLYPH = re.compile(r"Glyph (\d+) .*missing from font")


def save_figure(
    figure: Figure, path: str | os.PathLike[str], dpi: int = 120, *, tight_layout: bool = False
) -> None:
    """Write `figure` to `path` as PNG, atomically (laid out first with `tight_layout`).

    Characters its font lacks (class names in a script DejaVu Sans does not cover) are warned
    of once, naming `path` and them; matplotlib's own warnings named neither, twice over."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if tight_layout:
            figure.tight_layout()
        with atomic_path(path) as tmp:
            figure.savefig(tmp, dpi=dpi, bbox_inches="tight", format="png")
    missing = set()
    for warning in caught:
        if found := _MISSING_GLYPH.search(str(warning.message)):
            missing.add(chr(int(found.group(1))))
        else:  # any other, as it was given
            warnings.warn_explicit(warning.message, warning.category, warning.filename,
                                   warning.lineno)  # fmt: skip
    if missing:
        warnings.warn(
            f"{path}: characters missing from its font are drawn as empty boxes: "
            f"{''.join(sorted(missing))}",
            stacklevel=2,
        )


def plot_curves(
    path: str | os.PathLike[str],
    epochs: Sequence[int],
    series: Mapping[str, Sequence[float]],
    *,
    ylabel: str,
    title: str,
) -> None:
    """One line per entry of `series` (label -> one value per epoch) against `epochs`, which
    get whole-number ticks (a 2-epoch run's axis would otherwise read 1.0, 1.2, ..., 2.0; a
    1-epoch run's, where fewer than two whole numbers fit, 0.945, 0.960, ...)."""
    figure = Figure(figsize=(6, 4))
    ax = figure.subplots()
    for label, values in series.items():
        ax.plot(epochs, values, marker="o", label=label)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(figure, path)


# A figure that grew 0.75 inch a class with a count in every cell took 7 GB and a minute to
# draw for 200 classes (an image-folder tree may hold any number): it stops growing at
# MAX_SIDE_INCHES, and writes the counts and class names only where they still fit.
MAX_SIDE_INCHES = 16.0
LABELLED_CLASSES = 40


def plot_confusion_matrix(
    path: str | os.PathLike[str],
    matrix: np.ndarray,
    class_names: Sequence[str],
    *,
    title: str = "Confusion matrix",
) -> None:
    """Heatmap of `matrix` (K, K) int counts, rows true class, columns predicted; the counts
    are written in and the classes named up to LABELLED_CLASSES classes."""
    matrix = np.asarray(matrix)
    k = len(class_names)
    side = min(0.75 * k, MAX_SIDE_INCHES)
    figure = Figure(figsize=(1.0 + side, side))
    ax = figure.subplots()
    image = ax.imshow(matrix, cmap="Blues")
    figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    if k <= LABELLED_CLASSES:
        ax.set_xticks(range(k), class_names, rotation=45, ha="right")
        ax.set_yticks(range(k), class_names)
        threshold = matrix.max() / 2 if matrix.size else 0
        for row in range(k):
            for col in range(k):
                ax.text(
                    col, row, str(int(matrix[row, col])), ha="center", va="center", fontsize=7,
                    color="white" if matrix[row, col] > threshold else "black",
                )  # fmt: skip
    save_figure(figure, path)


# A grid cell is 1.3 inches wide: about 16 characters of an 8-point title. Longer class names
# ran into their neighbours' titles.
GRID_TITLE_CHARS = 16


def _shortened(text: str, limit: int) -> str:
    """`text`, cut to `limit` characters with an ellipsis where longer."""
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def plot_image_grid(
    path: str | os.PathLike[str], images: np.ndarray, titles: Sequence[str]
) -> None:
    """A near-square grid of `images` (N, H, W, C) uint8, C = 1 or 3, each titled (titles cut
    to `GRID_TITLE_CHARS` characters)."""
    columns = math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / columns)
    figure = Figure(figsize=(1.3 * columns, 1.45 * rows))
    for i, ax in enumerate(figure.subplots(rows, columns, squeeze=False).flat):
        ax.set_axis_off()
        if i < len(images):
            if images[i].shape[-1] == 1:
                ax.imshow(images[i][..., 0], cmap="gray", vmin=0, vmax=255)
            else:
                ax.imshow(images[i])
            ax.set_title(_shortened(titles[i], GRID_TITLE_CHARS), fontsize=8)
    save_figure(figure, path, dpi=100, tight_layout=True)
