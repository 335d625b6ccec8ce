"""Turn uint8 images into model inputs. Works on NumPy and JAX arrays alike."""

from __future__ import annotations

import math
from typing import TypeVar

import numpy as np

Array = TypeVar("Array")


def to_float(images: Array, dtype: np.dtype | type = np.float32) -> Array:
    """Scale uint8 pixels to [-1, 1]: the seed notebook's Normalize(mean=0.5, std=0.5).

    Args:
      images: (..., H, W, C) uint8.
      dtype: the floating dtype of the result.
    Returns:
      (..., H, W, C) `dtype`, (pixel / 255 - 0.5) / 0.5.
    """
    return images.astype(dtype) * (2.0 / 255.0) - 1.0


def channel_stats(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each channel's pixel mean and (population) standard deviation, in [0, 1] units.

    Exact, from one 256-bin histogram per channel: no float accumulation over the N*H*W
    pixels and no float copy of the images.

    Args:
      images: (..., C) uint8.
    Returns:
      (mean, std), each (C,) float32.
    """
    if images.dtype != np.uint8:
        raise TypeError(f"channel_stats needs uint8 images, got {images.dtype}")
    levels = np.arange(256, dtype=np.float64) / 255.0
    means, stds = [], []
    for c in range(images.shape[-1]):
        counts = np.bincount(images[..., c].ravel(), minlength=256)
        p = counts / counts.sum()
        mean = p @ levels
        means.append(mean)
        stds.append(np.sqrt(p @ (levels - mean) ** 2))
    return np.asarray(means, np.float32), np.asarray(stds, np.float32)


def standardize(images: Array, mean: Array, std: Array) -> Array:
    """Per-channel standardisation, as torchvision's Normalize after ToTensor.

    Args:
      images: (..., H, W, C) uint8.
      mean, std: (C,) float32, in [0, 1] units (`channel_stats`).
    Returns:
      (..., H, W, C) float32, (pixel / 255 - mean) / std.
    """
    return (images.astype(np.float32) * (1.0 / 255.0) - mean) / std


def flatten(images: Array) -> Array:
    """(N, H, W, C) -> (N, H*W*C), row-major, for MLPs."""
    # The feature count spelt out: reshape's -1 cannot be inferred for an empty batch.
    return images.reshape(images.shape[0], math.prod(images.shape[1:]))
