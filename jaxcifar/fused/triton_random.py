"""XLA's threefry random bits, computed where they are used: inside a Pallas kernel.

`layers.dropout_keep_from_seed` draws dropout's mask with XLA's RngBitGenerator
(RNG_THREE_FRY), an XLA kernel of its own in every training step. `rng_bit_generator_bits`
computes the same bits for any elements of the mask, from the same (4,) uint32 seed and the
elements' indices, with XLA's arithmetic (its ThreeFryBitGenerator, in XLA's prng library):
- the seed is two uint64 words: the threefry key (seed[0], seed[1]) and a counter
  seed[2] + seed[3] * 2**32;
- the shape is halved along its first even dimension (else its largest, rounded up): index
  i of that dimension is half i % 2 at index i // 2;
- an element's bits are word (half) of threefry2x32(key, counter + the element's row-major
  index in the halved shape), the counter's low word first.
Both functions are jnp ops on uint32 that Pallas' Triton backend lowers (adds wrap around;
shifts, xor, or, unsigned compares), so they run inside a kernel and in plain JAX alike,
where tests check them against `lax.rng_bit_generator` and `jax.random`.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import lax

# Threefry-2x32's rotation distances, alternating by block of four rounds, and the constant
# its third key word is derived with (Salmon et al. 2011, "Parallel random numbers: as easy
# as 1, 2, 3").
_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_KEY_PARITY = 0x1BD11BDA


def threefry2x32(key0: jax.Array, key1: jax.Array, x0: jax.Array, x1: jax.Array
                 ) -> tuple[jax.Array, jax.Array]:  # fmt: skip
    """Threefry-2x32 with 20 rounds, as `jax.random` and XLA compute it: the two hashed words
    of counter words (x0, x1) under key (key0, key1); uint32 arrays that broadcast together,
    and the results have their broadcast shape."""
    keys = (key0, key1, key0 ^ key1 ^ jnp.uint32(_KEY_PARITY))
    x0, x1 = x0 + keys[0], x1 + keys[1]
    for block in range(5):
        for distance in _ROTATIONS[block % 2]:
            x0 = x0 + x1
            x1 = x0 ^ _rotate_left(x1, distance)
        x0 = x0 + keys[(block + 1) % 3]
        x1 = x1 + keys[(block + 2) % 3] + jnp.uint32(block + 1)
    return x0, x1


def rng_bit_generator_bits(seed: Sequence[jax.Array], shape: tuple[int, ...],
                           indices: Sequence[jax.Array]) -> jax.Array:  # fmt: skip
    """The uint32 bits that `lax.rng_bit_generator(seed, shape, jnp.uint32,
    algorithm=RNG_THREE_FRY)` draws at `indices` (one int32 array per dimension of `shape`,
    broadcasting together; the result has their broadcast shape). `seed` is its four uint32
    words, each an array that broadcasts with the indices (a (1, 1) block in a kernel).
    `shape` has at least one dimension (XLA treats a scalar apart) and, as the row-major
    indices are int32, fewer than 2**31 elements."""
    split = next((d for d, size in enumerate(shape) if size % 2 == 0), None)
    if split is None:
        split = max(range(len(shape)), key=lambda d: shape[d])
    linear = None
    for dimension, (size, index) in enumerate(zip(shape, indices, strict=True)):
        if dimension == split:
            size, index = -(-size // 2), index // 2
        linear = index if linear is None else linear * size + index
    linear = linear.astype(jnp.uint32)
    low = seed[2] + linear
    high = seed[3] + jnp.where(low < linear, jnp.uint32(1), jnp.uint32(0))  # the carry
    word0, word1 = threefry2x32(seed[0], seed[1], low, high)
    return jnp.where(indices[split] % 2 == 0, word0, word1)


def _rotate_left(x: jax.Array, distance: int) -> jax.Array:
    return lax.shift_left(x, jnp.uint32(distance)) | lax.shift_right_logical(
        x, jnp.uint32(32 - distance)
    )
