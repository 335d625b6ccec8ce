"""On-device data augmentation for NHWC image batches: random crop with padding + horizontal flip.

Runs inside the jitted training step on uint8 or float arrays, driven by an explicit rng key,
so the host ships raw uint8 batches and augmentation is reproducible from the run's seed.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

CROP_PADDING = 4


def random_crop_flip(rng: jax.Array, images: jax.Array, padding: int = CROP_PADDING) -> jax.Array:
    """Each image of (N, H, W, C) shifted by up to `padding` pixels (reflect-padded, then an HxW
    crop at a random offset) and mirrored left-right with probability 1/2. Same shape and dtype."""
    n, height, width, _ = images.shape
    crop_key, flip_key = jax.random.split(rng)
    offsets = jax.random.randint(crop_key, (n, 2), 0, 2 * padding + 1)
    padded = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)), mode="reflect")

    def crop(image: jax.Array, offset: jax.Array) -> jax.Array:
        return jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (height, width, image.shape[-1]))

    cropped = jax.vmap(crop)(padded, offsets)
    flip = jax.random.bernoulli(flip_key, 0.5, (n, 1, 1, 1))
    return jnp.where(flip, cropped[:, :, ::-1], cropped)
