"""The fused Pallas head step against plain JAX: jax.value_and_grad of the head + optax.sgd.

On CPU the kernel runs in Pallas' interpret mode; the last test checks it also lowers to
Triton IR for a GPU, which needs no GPU.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax import lax

from jaxcifar.fused.pallas_head import LAYER_NAMES, head_train_step
from jaxcifar.models import cnn

MOMENTUM = 0.9
NUM_CLASSES = 10

fused_step = jax.jit(head_train_step, static_argnames=("momentum", "interpret"))


def head_loss(head_params: dict, flat: jax.Array, labels: jax.Array):
    logits = cnn.head(head_params, flat)  # the seed CNN's head in plain JAX
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), logits


@functools.partial(jax.jit, static_argnames="momentum")
def reference_step(head_params, head_velocity, flat, labels, learning_rate, momentum):
    """head_train_step's contract, from jax.value_and_grad and optax.sgd(lr, momentum)."""
    (loss, logits), (grads, d_flat) = jax.value_and_grad(head_loss, (0, 1), has_aux=True)(
        head_params, flat, labels
    )
    optimizer = optax.sgd(learning_rate, momentum=momentum)
    trace_state, *other_states = optimizer.init(head_params)
    state = (trace_state._replace(trace=head_velocity), *other_states)
    updates, (new_trace_state, *_) = optimizer.update(grads, state, head_params)
    correct = jnp.sum(jnp.argmax(logits, axis=-1) == labels)
    return optax.apply_updates(head_params, updates), new_trace_state.trace, d_flat, loss, correct


@functools.partial(jax.jit, static_argnums=0)
def run_steps(step, head_params, head_velocity, flat, labels, learning_rates):
    """len(learning_rates) steps of `step` on one batch in a lax.scan -> (params, losses)."""

    def body(carry, learning_rate):
        params, velocity = carry
        params, velocity, _, loss, _ = step(params, velocity, flat, labels, learning_rate, MOMENTUM)
        return (params, velocity), loss

    (params, _), losses = lax.scan(body, (head_params, head_velocity), learning_rates)
    return params, losses


@functools.partial(jax.jit, static_argnums=2)
def init_head(key: jax.Array, scale: jax.Array, input_shape=(32, 32, 3)) -> dict:
    """The seed CNN's fc1..fc5 params as `cnn.init` draws them, times `scale`."""
    params = cnn.init(key, input_shape)
    return jax.tree.map(lambda x: scale * x, {name: params[name] for name in LAYER_NAMES})


@pytest.fixture(scope="module")
def head_params():
    return init_head(jax.random.key(0), 1.0)


@pytest.fixture(scope="module")
def head_velocity():
    """A non-zero momentum buffer, so the step's use of the old velocity is checked too."""
    return init_head(jax.random.key(1), 0.1)


def assert_trees_close(got, want, **tolerances):
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for got_leaf, want_leaf in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        assert got_leaf.shape == want_leaf.shape and got_leaf.dtype == want_leaf.dtype
        np.testing.assert_allclose(got_leaf, want_leaf, **tolerances)


# A batch of 16 fills the kernels' blocks exactly: no padding rows, static slices.
@pytest.mark.parametrize("batch, n_in", [(4, 1024), (7, 1024), (3, 784), (16, 1024)])
def test_one_step_matches_value_and_grad_and_optax_sgd(head_params, head_velocity, batch, n_in):
    if n_in != 1024:  # 28x28 images: fc1 takes 784 inputs, which the kernel pads to 1024
        head_params = init_head(jax.random.key(0), 1.0, (28, 28, 1))
        head_velocity = init_head(jax.random.key(1), 0.1, (28, 28, 1))
    flat = jax.random.normal(jax.random.key(2), (batch, n_in))
    random_labels = jax.random.randint(jax.random.key(3), (batch,), 0, NUM_CLASSES)
    # Every other row labelled with its current prediction, so `correct` is not trivially 0.
    predicted = jnp.argmax(jax.jit(cnn.head)(head_params, flat), axis=-1)
    labels = jnp.where(jnp.arange(batch) % 2 == 0, predicted, random_labels)

    got = fused_step(head_params, head_velocity, flat, labels, 0.05, momentum=MOMENTUM)
    want = reference_step(head_params, head_velocity, flat, labels, 0.05, MOMENTUM)

    new_params, new_velocity, d_flat, loss, correct = got
    want_params, want_velocity, want_d_flat, want_loss, want_correct = want
    assert_trees_close(new_params, want_params, rtol=1e-5, atol=1e-6)
    assert_trees_close(new_velocity, want_velocity, rtol=1e-5, atol=1e-6)
    assert d_flat.shape == (batch, n_in) and d_flat.dtype == jnp.float32
    np.testing.assert_allclose(d_flat, want_d_flat, rtol=1e-5, atol=1e-7)
    assert loss.shape == () and loss.dtype == jnp.float32
    np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
    assert correct.shape == () and correct.dtype == jnp.int32
    assert int(correct) == int(want_correct) >= (batch + 1) // 2


def test_hundred_scanned_steps_track_optax_and_learn(head_params):
    """A scheduled (traced) rate; 8 random inputs with random labels are memorisable."""
    batch = 8
    flat = jax.random.normal(jax.random.key(4), (batch, 1024))
    labels = jax.random.randint(jax.random.key(5), (batch,), 0, NUM_CLASSES)
    learning_rates = jnp.linspace(0.05, 0.005, 100)
    zero_velocity = jax.tree.map(jnp.zeros_like, head_params)

    params, losses = run_steps(
        head_train_step, head_params, zero_velocity, flat, labels, learning_rates
    )
    want_params, want_losses = run_steps(
        reference_step, head_params, zero_velocity, flat, labels, learning_rates
    )

    assert_trees_close(params, want_params, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(losses, want_losses, rtol=1e-4, atol=1e-5)
    assert losses[-1] < 0.1 * losses[0]


def test_labels_read_through_the_order_and_records_written_at_its_index(
    head_params, head_velocity
):
    """An epoch's step: the batch's labels are labels[order[index]], and with records the
    loss and correct count land at row index, every other row as it was."""
    labels = jax.random.randint(jax.random.key(6), (12,), 0, NUM_CLASSES)
    order = jax.random.permutation(jax.random.key(7), 12).reshape(3, 4).astype(jnp.int32)
    flat = jax.random.normal(jax.random.key(8), (4, 1024))
    index = jnp.int32(2)
    *_, want_loss, want_correct = reference_step(
        head_params, head_velocity, flat, labels[order[index]], 0.05, MOMENTUM
    )
    step = functools.partial(head_train_step, head_params, head_velocity, flat, labels, 0.05,
                             MOMENTUM, label_rows=(order, index))  # fmt: skip
    *_, loss, correct = step()
    np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
    assert int(correct) == int(want_correct)
    *_, losses, corrects = step(records=(jnp.full(3, 7.0), jnp.full(3, 9, jnp.int32)))
    np.testing.assert_array_equal(losses, [7.0, 7.0, loss])
    np.testing.assert_array_equal(corrects, [9, 9, correct])
    with pytest.raises(ValueError, match=r"records must be \(3,\) float32 losses and int32"):
        step(records=(jnp.zeros(4), jnp.zeros(4, jnp.int32)))
    # Row 2 as index 0 and a static offset of 2 (an unrolled loop's third step): the same.
    *_, losses_offset, _ = head_train_step(
        head_params, head_velocity, flat, labels, 0.05, MOMENTUM,
        label_rows=(order, jnp.int32(0)), row_offset=2,
        records=(jnp.full(3, 7.0), jnp.full(3, 9, jnp.int32)),
    )  # fmt: skip
    np.testing.assert_array_equal(losses_offset, losses)
    with pytest.raises(ValueError, match="row_offset needs label_rows"):
        head_train_step(head_params, head_velocity, flat, labels[:4], 0.05, MOMENTUM, row_offset=1)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"flat": jnp.zeros((4, 1000))}, r"flat must be \(batch, 1024\).*got \(4, 1000\)"),
        ({"labels": jnp.zeros((5,), jnp.int32)}, r"labels must be \(4,\) integers.*got \(5,\)"),
        ({"labels": jnp.zeros((4,))}, r"labels must be \(4,\) integers.*float32"),
        (
            {"head_velocity": {name: {} for name in ("fc1", "fc2")}},
            r"head_velocity must have the layers \('fc1', 'fc2', 'fc3', 'fc4', 'fc5'\)",
        ),
    ],
)
def test_bad_input_raises_a_value_error_saying_what_was_expected(head_params, change, message):
    arguments = {
        "head_params": head_params,
        "head_velocity": head_params,
        "flat": jnp.zeros((4, 1024)),
        "labels": jnp.zeros((4,), jnp.int32),
        "learning_rate": 0.05,
        "momentum": MOMENTUM,
    }
    with pytest.raises(ValueError, match=message):
        head_train_step(**{**arguments, **change})


def test_velocity_of_other_shapes_is_refused(head_params):
    velocity = {**head_params, "fc5": {"kernel": jnp.zeros((16, 12)), "bias": jnp.zeros(12)}}
    with pytest.raises(ValueError, match="head_velocity must have the shapes of head_params"):
        head_train_step(head_params, velocity, jnp.zeros((4, 1024)), jnp.zeros(4, int), 0.05, 0.9)


def test_lowers_to_two_triton_kernels_updating_in_place(head_params):
    """Lowering for a CUDA GPU needs no GPU: the kernels keep to what Pallas' Triton backend
    lowers, and all 20 params and velocity arrays alias outputs of the two custom calls."""
    step = functools.partial(head_train_step, momentum=MOMENTUM, interpret=False)
    lowered = (
        jax.jit(step)
        .trace(
            head_params,
            head_params,
            jax.ShapeDtypeStruct((4, 1024), jnp.float32),
            jax.ShapeDtypeStruct((4,), jnp.int32),
            jax.ShapeDtypeStruct((), jnp.float32),
        )
        .lower(lowering_platforms=("cuda",))
        .as_text()
    )
    assert lowered.count("custom_call @__gpu$xla.gpu.triton") == 2
    # The params and velocity arrays, and the step's records (loss and correct count).
    assert lowered.count("stablehlo.output_operand_alias<") == 2 * 2 * len(LAYER_NAMES) + 2


def test_correct_counts_the_batchs_rows_only_not_the_kernels_padding(head_params, head_velocity):
    """A batch of 3 fills 3 of the kernel's 16 rows; the 13 padding rows (zero input, label 0)
    must not count, even where the head predicts class 0 for them."""
    fc5 = head_params["fc5"]
    params = {**head_params, "fc5": {**fc5, "bias": fc5["bias"].at[0].add(100.0)}}
    flat = jax.random.normal(jax.random.key(10), (3, 1024))
    labels = jnp.array([0, 1, 2], jnp.int32)
    *_, correct = fused_step(params, head_velocity, flat, labels, 0.05, momentum=MOMENTUM)
    *_, want_correct = reference_step(params, head_velocity, flat, labels, 0.05, MOMENTUM)
    assert int(correct) == int(want_correct) == 1  # every row predicts class 0


def test_without_records_the_step_returns_the_loss_of_order_row_index_plus_offset(
    head_params, head_velocity
):
    """Row 1 as (index 1, offset 0) and (index 0, offset 1): its labels, and its loss and
    count returned, not row index's or row 2's (the last row hid a row read one too far)."""
    labels = jax.random.randint(jax.random.key(11), (12,), 0, NUM_CLASSES)
    order = jax.random.permutation(jax.random.key(12), 12).reshape(3, 4).astype(jnp.int32)
    flat = jax.random.normal(jax.random.key(13), (4, 1024))
    *_, want_loss, want_correct = reference_step(
        head_params, head_velocity, flat, labels[order[1]], 0.05, MOMENTUM
    )
    step = jax.jit(head_train_step, static_argnames=("momentum", "row_offset"))
    for index, offset in [(1, 0), (0, 1)]:
        *_, loss, correct = step(head_params, head_velocity, flat, labels, 0.05,
                                 momentum=MOMENTUM, label_rows=(order, jnp.int32(index)),
                                 row_offset=offset)  # fmt: skip
        np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
        assert int(correct) == int(want_correct)
