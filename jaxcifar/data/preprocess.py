"""Turn uint8 images into model inputs. Works on NumPy and JAX arrays alike."""

from __future__ import annotations

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


def flatten(images: Array) -> Array:
    """(N, H, W, C) -> (N, H*W*C), row-major, for MLPs."""
    return images.reshape(images.shape[0], -1)
