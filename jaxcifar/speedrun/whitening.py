"""The fixed first layer: a 2x2 conv that whitens image patches.

Its filters are the eigenvectors of the training patches' second-moment matrix, each scaled
by 1/sqrt(eigenvalue + eps), and their negatives (so the GELU after it keeps both signs).
The uncentred second moments, not the covariance, as in airbench: with pixels near zero mean
they barely differ, and the layer's trainable bias absorbs the rest.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

EPS = 5e-4


def patches(images: jax.Array, size: int) -> jax.Array:
    """Every size x size patch of (N, H, W, C) images, stride 1, as rows of
    (N * (H - size + 1) * (W - size + 1), size * size * C) float32, each flattened in (dy, dx, c)
    order: the order of an HWIO kernel's first three axes."""
    _, height, width, channels = images.shape
    rows, cols = height - size + 1, width - size + 1
    shifted = [
        images[:, dy : dy + rows, dx : dx + cols] for dy in range(size) for dx in range(size)
    ]
    stacked = jnp.stack(shifted, axis=3)  # (N, rows, cols, size * size, C)
    return stacked.reshape(-1, size * size * channels).astype(jnp.float32)


def whitening_kernel(images: jax.Array, size: int = 2, eps: float = EPS) -> jax.Array:
    """(size, size, C, 2 * size * size * C) float32 HWIO kernel for float images (N, H, W, C).

    Output channel k < size*size*C projects a patch onto the k-th eigenvector of the patch
    second moments (largest eigenvalue first), divided by sqrt(eigenvalue + eps), so on these
    images those channels have second moments diag(lambda / (lambda + eps)) ~ identity; channel
    k + size*size*C is its negative.
    """
    rows = patches(images, size)
    # Full float32: a GPU's default TF32 dot (10-bit mantissa) would perturb the matrix by
    # ~1e-3 of its largest eigenvalue, far more than its smallest (~1e-5 of the largest).
    second_moments = jnp.matmul(rows.T, rows, precision=jax.lax.Precision.HIGHEST) / rows.shape[0]
    eigenvalues, eigenvectors = jnp.linalg.eigh(second_moments)  # ascending
    scaled = eigenvectors[:, ::-1] / jnp.sqrt(eigenvalues[::-1] + eps)
    kernel = jnp.concatenate([scaled, -scaled], axis=1)
    return kernel.reshape(size, size, images.shape[-1], kernel.shape[-1])
