"""On-device data augmentation for NHWC image batches: translations and horizontal flips.

Runs inside jitted code on uint8 or float arrays, driven by explicit rng keys or masks, so the
host ships raw uint8 batches and augmentation is reproducible from the run's seed. The random
pieces (`random_translate`, `flip_where`) compose into the seed CNN's `random_crop_flip` and
into the speedrun's alternating flip; the fixed ones (`flip`, `shift`) make test-time views.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

CROP_PADDING = 4


def _reflect_pad(images: jax.Array, padding: int) -> jax.Array:
    return jnp.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)), mode="reflect")


def random_translate(rng: jax.Array, images: jax.Array, padding: int) -> jax.Array:
    """Each image of (N, H, W, C) shifted by an independent uniform offset in
    [-padding, padding] along each axis: reflect-padded, then an HxW crop. Same shape and dtype."""
    n, height, width, channels = images.shape
    offsets = jax.random.randint(rng, (n, 2), 0, 2 * padding + 1)

    def crop(image: jax.Array, offset: jax.Array) -> jax.Array:
        return jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (height, width, channels))

    return jax.vmap(crop)(_reflect_pad(images, padding), offsets)


def flip(images: jax.Array) -> jax.Array:
    """(N, H, W, C) mirrored left-right, of the same dtype."""
    return images[:, :, ::-1]


def flip_where(mask: jax.Array, images: jax.Array) -> jax.Array:
    """(N, H, W, C) with image i mirrored left-right where `mask` (N,) bool is True."""
    return jnp.where(mask[:, None, None, None], flip(images), images)


def shift(images: jax.Array, dy: int, dx: int) -> jax.Array:
    """(N, H, W, C) translated so output pixel (y, x) is input pixel (y + dy, x + dx), with the
    border filled by reflection: the crop `random_translate` makes at offset (dy, dx). Same
    shape and dtype."""
    _, height, width, _ = images.shape
    pad = max(abs(dy), abs(dx))
    padded = _reflect_pad(images, pad)
    return padded[:, pad + dy : pad + dy + height, pad + dx : pad + dx + width]


def random_crop_flip(rng: jax.Array, images: jax.Array, padding: int = CROP_PADDING) -> jax.Array:
    """Each image of (N, H, W, C) shifted by up to `padding` pixels (reflect-padded, then an HxW
    crop at a random offset) and mirrored left-right with probability 1/2. Same shape and dtype."""
    crop_key, flip_key = jax.random.split(rng)
    cropped = random_translate(crop_key, images, padding)
    return flip_where(jax.random.bernoulli(flip_key, 0.5, (images.shape[0],)), cropped)
