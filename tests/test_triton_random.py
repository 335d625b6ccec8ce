"""`fused.triton_random` in plain JAX against what it reproduces inside kernels: jax.random's
threefry and XLA's RngBitGenerator, which draws dropout's masks."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jaxcifar.fused import triton_random
from jaxcifar.models import layers


def test_threefry2x32_is_jax_randoms_hash():
    key = jax.random.key_data(jax.random.key(3))
    # fold_in hashes the counter (0, data) under the key, and the result is the new key.
    for data in (0, 7, 2**31 + 5):
        folded = triton_random.threefry2x32(key[0], key[1], jnp.uint32(0), jnp.uint32(data))
        expected = jax.random.key_data(jax.random.fold_in(jax.random.key(3), data))
        np.testing.assert_array_equal(jnp.stack(folded), expected)


# The seed CNN's masks at batches 4, 3 (first even dimension the channels) and 1 (28x28:
# 7x7), a shape with no even dimension, and a one-dimensional one.
@pytest.mark.parametrize(
    "shape", [(4, 8, 8, 16), (3, 7, 7, 16), (1, 8, 8, 16), (3, 3, 5, 3), (5,)]
)
def test_rng_bit_generator_bits_are_xlas(shape):
    for key in range(3):
        seed = layers.dropout_seed(jax.random.key(key))
        _, expected = lax.rng_bit_generator(
            seed, shape, jnp.uint32, algorithm=lax.RandomAlgorithm.RNG_THREE_FRY
        )
        indices = tuple(jnp.indices(shape, dtype=jnp.int32))
        bits = triton_random.rng_bit_generator_bits(tuple(seed), shape, indices)
        np.testing.assert_array_equal(bits, expected)


def test_a_counter_low_word_that_wraps_carries():
    seed = jnp.array([1, 2, 2**32 - 3, 9], jnp.uint32)
    _, expected = lax.rng_bit_generator(
        seed, (8, 4), jnp.uint32, algorithm=lax.RandomAlgorithm.RNG_THREE_FRY
    )
    indices = tuple(jnp.indices((8, 4), dtype=jnp.int32))
    bits = triton_random.rng_bit_generator_bits(tuple(seed), (8, 4), indices)
    np.testing.assert_array_equal(bits, expected)


def test_dropout_seeds_vmap_exactly():
    """The fused epochs draw a whole epoch's dropout seeds in one vmap; each is the seed
    its step's key gives alone."""
    step_key = jax.random.key(11)
    seeds = jax.vmap(lambda i: layers.dropout_seed(jax.random.fold_in(step_key, i)))(
        jnp.arange(5)
    )
    for i in range(5):
        np.testing.assert_array_equal(
            seeds[i], layers.dropout_seed(jax.random.fold_in(step_key, i))
        )
