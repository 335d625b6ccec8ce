"""The seed CNN's convolutional part in Pallas kernels against plain JAX: `cnn.features` with
dropout, `jax.vjp` of it, and optax.sgd's momentum update.

On CPU the kernels run in Pallas' interpret mode; the last test checks they also lower to
Triton IR for a GPU, which needs no GPU.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxcifar.fused import pallas_convs
from jaxcifar.fused.step import StepBatch
from jaxcifar.models import cnn, layers

MOMENTUM = 0.9
LEARNING_RATE = 0.05


def conv_part(input_shape):
    """Conv params of the seed CNN for (H, W, C) images, and a velocity that is not zero."""
    params = cnn.init(jax.random.key(0), input_shape)
    conv_params = {name: params[name] for name in cnn.CONV_LAYERS}
    return conv_params, jax.tree.map(lambda p: 0.1 * jnp.sin(7.0 * p), conv_params)


def reference_step(conv_params, velocity, x, rng, d_flat):
    """(flat, params, velocity) from cnn.features, jax.vjp and optax.sgd."""
    flat, features_vjp = jax.vjp(lambda p: cnn.features(p, x, train=True, rng=rng), conv_params)
    (grads,) = features_vjp(d_flat)
    optimizer = optax.sgd(LEARNING_RATE, momentum=MOMENTUM)
    trace_state, *other_states = optimizer.init(conv_params)
    state = (trace_state._replace(trace=velocity), *other_states)
    updates, (trace_state, *_) = optimizer.update(grads, state, conv_params)
    return flat, optax.apply_updates(conv_params, updates), trace_state.trace


def step_batch(batch, input_shape, rng, examples=10):
    """A StepBatch of `examples` random uint8 images whose step 1 is `batch` of them, in a
    scrambled order, with `rng`'s dropout seed; and those images as floats."""
    images = jax.random.randint(jax.random.key(1), (examples, *input_shape), 0, 256, jnp.uint8)
    order = jax.random.permutation(jax.random.key(4), examples)[: 2 * batch].reshape(2, batch)
    seeds = jnp.stack([layers.dropout_seed(jax.random.key(9)), layers.dropout_seed(rng)])
    labels = jnp.zeros(examples, jnp.int32)
    step = StepBatch(images, labels, order, seeds, jnp.int32(1))
    return step, step.batch_images()


# CIFAR-10's batch-4 step; a batch of 3 leaves the last block of pooled positions part
# empty; 28x28 greyscale pools to 14x14 and 7x7, sizes that are not powers of two (pool2's
# dropped odd row and column: test_odd_pooled_sizes_and_an_offset_step_train_as_plain_jax_does).
@pytest.mark.parametrize("batch, input_shape", [(4, (32, 32, 3)), (3, (28, 28, 1))])
def test_one_step_equals_plain_jax(batch, input_shape):
    conv_params, velocity = conv_part(input_shape)
    rng = jax.random.key(2)
    step, x = step_batch(batch, input_shape, rng)
    flat_shape = jax.eval_shape(lambda: cnn.features(conv_params, x, train=True, rng=rng)).shape
    d_flat = jax.random.normal(jax.random.key(3), flat_shape)
    expected_flat, expected_params, expected_velocity = reference_step(
        conv_params, velocity, x, rng, d_flat
    )

    flat, finish = pallas_convs.features_train_step(conv_params, step)
    params, new_velocity = finish(velocity, d_flat, jnp.float32(LEARNING_RATE), MOMENTUM)

    np.testing.assert_allclose(flat, expected_flat, rtol=1e-5, atol=1e-6)
    assert 0.1 < float(jnp.mean(flat == 0.0)) < 0.9  # ReLU and dropout both at work
    for name in cnn.CONV_LAYERS:
        for kind in ("kernel", "bias"):
            scale = float(jnp.abs(expected_velocity[name][kind]).max())
            np.testing.assert_allclose(
                new_velocity[name][kind], expected_velocity[name][kind], atol=2e-6 * scale
            )
            np.testing.assert_allclose(
                params[name][kind], expected_params[name][kind], atol=2e-6 * scale
            )
            moved = jnp.abs(params[name][kind] - conv_params[name][kind]).max()
            assert moved > 1e-2, (name, kind)  # the update is not trivially equal


def test_forward_drops_the_batchs_mask_and_records_every_phase():
    """The kernels draw the mask `layers.dropout_keep` draws for the step's key."""
    conv_params, _ = conv_part((32, 32, 3))
    rng = jax.random.key(5)
    step, x = step_batch(2, (32, 32, 3), rng)
    flat, residuals = pallas_convs.features_forward(conv_params, step)
    keep = layers.dropout_keep(rng, (2, 8, 8, 16), cnn.DROPOUT_RATE).reshape(2, -1)
    expected = layers.apply_dropout(cnn.features(conv_params, x), keep, cnn.DROPOUT_RATE)
    np.testing.assert_allclose(flat, expected, rtol=1e-5, atol=1e-6)
    kept_positive = cnn.features(conv_params, x) > 0.0
    np.testing.assert_array_equal(flat > 0.0, keep & kept_positive)
    assert 0.1 < float(jnp.mean(keep)) < 0.9
    # Pooling kept the first maximum of each window: every phase occurs.
    assert set(np.unique(residuals.phase1)) == set(np.unique(residuals.phase2)) == {0, 1, 2, 3}


def test_lowers_to_four_triton_kernels_updating_in_place():
    """Lowering for a CUDA GPU needs no GPU: the kernels keep to what Pallas' Triton backend
    lowers, and the update kernel aliases both layers' params and velocity arrays. The step
    is only those kernels: XLA neither gathers the batch nor draws the dropout mask."""
    conv_params, velocity = conv_part((32, 32, 3))

    def step(conv_params, velocity, batch, d_flat):
        flat, finish = pallas_convs.features_train_step(conv_params, batch, interpret=False)
        return flat, finish(velocity, d_flat, jnp.float32(LEARNING_RATE), MOMENTUM)

    batch = StepBatch(
        jax.ShapeDtypeStruct((100, 32, 32, 3), jnp.uint8),
        jax.ShapeDtypeStruct((100,), jnp.int32),
        jax.ShapeDtypeStruct((25, 4), jnp.int32),
        jax.ShapeDtypeStruct((25, 4), jnp.uint32),
        jax.ShapeDtypeStruct((), jnp.int32),
    )
    lowered = (
        jax.jit(step)
        .trace(conv_params, velocity, batch, jax.ShapeDtypeStruct((4, 1024), jnp.float32))
        .lower(lowering_platforms=("cuda",))
        .as_text()
    )
    assert lowered.count("custom_call @__gpu$xla.gpu.triton") == 4
    assert lowered.count("stablehlo.output_operand_alias<") == 2 * 4
    # Beside the kernels, only free reshapes (and the learning rate's constant block).
    ops = set(re.findall(r"= stablehlo\.(\w+)", lowered)) - {"custom_call"}
    assert ops <= {"reshape", "constant", "broadcast_in_dim"}, ops


def test_odd_pooled_sizes_and_an_offset_step_train_as_plain_jax_does():
    """10x14 images pool to 5x7, whose odd last row and column pool2 drops: no gradient may
    flow back from them. The step's row is index 0 plus offset 1 (an unrolled loop's second
    step): every kernel, the backward one's image reads included, must add the offset."""
    batch, input_shape = 2, (10, 14, 3)
    conv_params, velocity = conv_part(input_shape)
    rng = jax.random.key(2)
    step, x = step_batch(batch, input_shape, rng, examples=5)
    step = StepBatch(step.images, step.labels, step.order, step.dropout_seeds, jnp.int32(0), 1)
    d_flat = jax.random.normal(jax.random.key(3), (batch, 2 * 3 * 16))
    want_flat, want_params, want_velocity = reference_step(conv_params, velocity, x, rng, d_flat)

    flat, finish = pallas_convs.features_train_step(conv_params, step)
    params, new_velocity = finish(velocity, d_flat, jnp.float32(LEARNING_RATE), MOMENTUM)

    np.testing.assert_allclose(flat, want_flat, rtol=1e-5, atol=1e-6)
    for got, want in ((params, want_params), (new_velocity, want_velocity)):
        for got_leaf, want_leaf in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
            scale = float(jnp.abs(want_leaf).max())
            np.testing.assert_allclose(got_leaf, want_leaf, atol=2e-6 * scale)
