"""Test-time augmentation: logits averaged over mirrored and translated views of each image.

Level 0: the image itself. Level 1: the image and its mirror, 1/2 each. Level 2 (airbench94):
the level-1 pair at weight 1/2, and the level-1 pairs of the image translated one pixel
up-left and one pixel down-right (reflect-filled) at 1/4 each, i.e. weights 1/4, 1/4 and
1/8 x 4 over six views.
"""

from __future__ import annotations

from collections.abc import Callable

import jax

from jaxcifar import augment

LogitsFn = Callable[[jax.Array], jax.Array]

# (dy, dx) of the level-2 translations: output pixel (y, x) shows input pixel (y+dy, x+dx).
TRANSLATIONS = ((-1, -1), (1, 1))


def views(images: jax.Array, level: int) -> list[tuple[float, jax.Array]]:
    """[(weight, view)] for (N, H, W, C) images at `level`; the weights sum to 1."""
    if level == 0:
        return [(1.0, images)]
    mirrored = [(0.5, images), (0.5, augment.flip(images))]
    if level == 1:
        return mirrored
    weighted = [(w / 2, view) for w, view in mirrored]
    for dy, dx in TRANSLATIONS:
        shifted = augment.shift(images, dy, dx)
        weighted += [(w / 2 / len(TRANSLATIONS), view) for w, view in views(shifted, 1)]
    return weighted


def tta_logits(logits_fn: LogitsFn, images: jax.Array, level: int) -> jax.Array:
    """(N, K) weighted mean of `logits_fn` over the `level` views of (N, H, W, C) `images`."""
    return sum(weight * logits_fn(view) for weight, view in views(images, level))
