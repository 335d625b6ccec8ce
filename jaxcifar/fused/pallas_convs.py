"""The seed CNN's convolutional part trained in Pallas kernels: `features_forward`, then,
once the head has given d loss / d flat, `features_backward_update`.

Four launches a step do what XLA spreads over dozens of kernels (38 in XLA:CPU's program of
`fused.step.xla_features_step`, counted from its HLO: two convolutions forward and backward,
bias adds, ReLUs, poolings, dropout and their gradients, the momentum updates):
1. conv1 -> ReLU -> 2x2 max pool, 16 pooled positions per program;
2. conv2 -> ReLU -> 2x2 max pool -> dropout, giving the head's input;
3. (after the head) both layers' kernel and bias gradients, as partial sums per program of
   16 of conv2's input positions: d loss / d conv2's output (pool2 and dropout routed) times
   its input, then through conv2 transposed, pool1 and ReLU1 to conv1's output;
4. the partial sums summed, one program per tap of each layer, and the SGD-with-momentum
   updates, in place.
With `pallas_head`'s two that makes the whole training step six kernels, where the launch
count is what bounds the seed recipe's batch-4 step on a GPU (issue #9, part A), and besides
them no XLA op but a schedule's learning rate, unless constant: the kernels read the batch
from the training set through the epoch's order (conv1's pixels, scaled to [-1, 1] as they
are loaded; the head's labels), and conv2's draws its dropout mask from the step's seed with
XLA's own arithmetic (`triton_random`), the mask the XLA path draws. The backward kernels
need not keep the mask: a unit dropout kept and ReLU passed is one whose output is > 0.

Layout: every activation is a 2-D (positions, channels) array, positions in NHWC row-major
order (n, h, w), so (B, H, W, C) arrays are passed as their free reshape (B*H*W, C). A
convolution is an implicit GEMM: for each of the 9 kernel taps, one (rows, C_in) @ (C_in,
C_out) dot whose rows are gathered through an index array, masked where the tap falls in the
zero padding; nothing is padded or unfolded in memory. Pooling computes the convolution at
the four positions of each 2x2 window (its "phases" 0..3, row-major) and keeps the first
maximum, as `layers.max_pool_2x2` does, and its phase, which the backward kernels read to
route each pooled gradient back to its position.

Dots take JAX's default float32 precision, as `pallas_head`'s do (TF32 on a recent NVIDIA
GPU, like the XLA path's convolutions there). Written to the rules of Pallas' Triton backend:
power-of-two blocks, every dot operand dimension >= 16 (conv1's 3 input channels are loaded
as 16, the rest masked), no reshapes; gathers are index-array loads. On a CPU the kernels run
in interpret mode.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from jaxcifar.data.preprocess import to_float
from jaxcifar.fused import triton_random
from jaxcifar.fused.step import StepBatch
from jaxcifar.fused.triton_blocks import (
    dot_size, momentum_update, step_row, store_block, triton_call,
)  # fmt: skip
from jaxcifar.models import cnn, layers

# The 2x2 window's positions in row-major order; a pooled value's phase is its index here.
_PHASES = ((0, 0), (0, 1), (1, 0), (1, 1))
# The 3x3 kernel's taps (di, dj) in HWIO order: a kernel (3, 3, C_in, C_out) is the
# (9, C_in, C_out) array of tap matrices di * 3 + dj.
_TAPS = tuple((di, dj) for di in range(3) for dj in range(3))
# Pooled positions per program of the forward and input-gradient kernels (the dots' rows):
# Triton's smallest dot operand.
_BLOCK = 16
# Rows of partial sums per loop iteration where `_updates_kernel` sums them.
_SUM_ROWS = 16


class Geometry(NamedTuple):
    """A convolution layer's input, (batch, height, width), and its 2x2-pooled output."""

    batch: int
    height: int
    width: int

    @property
    def pooled(self) -> tuple[int, int]:
        return self.height // 2, self.width // 2

    @property
    def pooled_positions(self) -> int:
        pooled_height, pooled_width = self.pooled
        return self.batch * pooled_height * pooled_width


class Residuals(NamedTuple):
    """What the backward kernels read of the forward pass; 2-D (positions, channels) arrays.

    images: the training set as (N*H*W, C0) uint8; order (S, B) int32, index (1,) int32 and
    offset (a Python int): the batch is its images order[index + offset]. pooled1: conv1's
    pooled ReLU output (B*H/2*W/2, C1) float32, phase1: its windows' first-maximum phases
    (same shape) int32. flat: the head's input as (B*H/4*W/4, C2) float32, dropout applied,
    and phase2 int32, the same shape. geometry1, geometry2: the two layers' input geometries
    (Python ints: residuals live within one traced step)."""

    images: jax.Array
    order: jax.Array
    index: jax.Array
    offset: int
    pooled1: jax.Array
    phase1: jax.Array
    flat: jax.Array
    phase2: jax.Array
    geometry1: Geometry
    geometry2: Geometry


def features_train_step(conv_params: dict, batch: StepBatch, *,
                        interpret: bool | None = None) -> tuple[jax.Array, Callable]:  # fmt: skip
    """`fused.step.xla_features_step` in Pallas kernels: (flat (B, n) float32, finish), where
    `finish(conv_velocity, d_flat, learning_rate, momentum) -> (conv params, velocity)`.
    The dropout mask is `batch.dropout_keep`'s, so both train alike."""
    flat, residuals = features_forward(conv_params, batch, interpret=interpret)

    def finish(conv_velocity, d_flat, learning_rate, momentum):
        return features_backward_update(
            conv_params, conv_velocity, residuals, d_flat, learning_rate, momentum,
            interpret=interpret,
        )  # fmt: skip

    return flat, finish


def features_forward(
    conv_params: dict, batch: StepBatch, *, interpret: bool | None = None
) -> tuple[jax.Array, Residuals]:
    """`cnn.features(conv_params, x, train=True)` for `batch`'s images and dropout mask
    (`batch.dropout_keep`), in two kernels, which read both from the batch's references.

    `conv_params` {"conv1": {"kernel": (3, 3, C0, C1), "bias": (C1,)}, "conv2": {... (3, 3,
    C1, C2) ...}} float32. Returns (flat (B, H//4*W//4*C2) float32, the residuals
    `features_backward_update` takes). `interpret=None` interprets the kernels when
    `jax.default_backend()` is "cpu" and compiles them (Triton) otherwise.
    """
    examples, height, width, channels = batch.images.shape
    batch_size = batch.order.shape[1]
    geometry1 = Geometry(batch_size, height, width)
    geometry2 = Geometry(batch_size, *geometry1.pooled)
    images = batch.images.reshape(examples * height * width, channels)
    index = jnp.reshape(batch.index, (1,)).astype(jnp.int32)
    step = (index, batch.offset)
    pooled1, phase1 = _conv_relu_pool(
        conv_params["conv1"], geometry1, interpret, step, images=(images, batch.order)
    )
    dropped_shape = cnn.dropped_shape(conv_params, (batch_size, height, width, channels))
    flat, phase2 = _conv_relu_pool(
        conv_params["conv2"], geometry2, interpret, step, activations=pooled1,
        dropout=(batch.dropout_seeds, dropped_shape),
    )  # fmt: skip
    residuals = Residuals(
        images, batch.order, index, batch.offset, pooled1, phase1, flat, phase2, geometry1,
        geometry2,
    )
    return flat.reshape(batch_size, -1), residuals


def features_backward_update(
    conv_params: dict, conv_velocity: dict, residuals: Residuals, d_flat: jax.Array,
    learning_rate: jax.Array, momentum: float, *, interpret: bool | None = None,
) -> tuple[dict, dict]:  # fmt: skip
    """One SGD-with-momentum step of conv1 and conv2 (optax.sgd's: v <- m*v + g, p <- p -
    lr*v) from `d_flat` (B, n) float32 = d loss / d `features_forward`'s flat, in two
    kernels. `conv_params` and `conv_velocity` as `features_forward` takes them (the velocity
    the same structure); `learning_rate` a float32 scalar, `momentum` a Python float.
    Returns (params, velocity), the same structures."""
    d_flat = d_flat.astype(jnp.float32).reshape(residuals.flat.shape)
    sums = _backward(conv_params, residuals, d_flat, interpret)
    rate = jnp.full((1, 1), learning_rate, jnp.float32)
    return _updates(conv_params, conv_velocity, sums, rate, momentum, interpret)


def _conv_relu_pool(
    layer: dict, geometry: Geometry, interpret: bool | None, step: tuple[jax.Array, int], *,
    images: tuple[jax.Array, jax.Array] | None = None, activations: jax.Array | None = None,
    dropout: tuple[jax.Array, tuple[int, ...]] | None = None,
) -> tuple[jax.Array, jax.Array]:  # fmt: skip
    """(pooled (P, C_out) float32, phase (P, C_out) int32) of max_pool(relu(conv(input))),
    then dropout when given; P = `geometry.pooled_positions`. The input is either `images`
    (the training set (N*H*W, C_in) uint8, order (S, B) int32), of which the batch is images
    order[row], or `activations` (B*H*W, C_in) float32. `dropout` is (the dropout seeds
    (S, 4) uint32, the mask's shape): the mask drawn from seed `row`. `step` is (index (1,)
    int32, offset, a Python int): row = index + offset."""
    index, offset = step
    kernel, bias = layer["kernel"], layer["bias"]
    c_in, c_out = kernel.shape[2:]
    positions = geometry.pooled_positions
    out_shape = (
        jax.ShapeDtypeStruct((positions, c_out), jnp.float32),
        jax.ShapeDtypeStruct((positions, c_out), jnp.int32),
    )
    inputs = [*(images or (activations,)), kernel.reshape(9, c_in, c_out), bias.reshape(1, c_out),
              index]  # fmt: skip
    if dropout is not None:
        inputs.append(dropout[0])
    body = functools.partial(
        _forward_kernel, geometry=geometry, gather=images is not None, offset=offset,
        dropped_shape=None if dropout is None else dropout[1],
    )  # fmt: skip
    grid = (pl.cdiv(positions, _BLOCK),)
    return triton_call(body, out_shape, grid, name="conv_relu_pool", interpret=interpret)(*inputs)


def _forward_kernel(*refs, geometry: Geometry, gather: bool, offset: int,
                    dropped_shape: tuple[int, ...] | None) -> None:  # fmt: skip
    """One program: `_BLOCK` pooled positions of `_conv_relu_pool`. Refs: the input (images
    (N*H*W, C_in) uint8 and order (S, B) int32 when `gather`, else activations (B*H*W,
    C_in)), kernel (9, C_in, C_out), bias (1, C_out), index (1,) int32, [dropout seeds (S, 4)
    uint32 when `dropped_shape` (the mask's (B, H/2, W/2, C_out)),] then the outputs pooled
    (P, C_out) float32 and phase (P, C_out) int32. The step's row is index + `offset`."""
    if gather:
        input_ref, order_ref, kernel_ref, bias_ref, index_ref, *refs = refs
    else:
        (input_ref, kernel_ref, bias_ref, index_ref, *refs), order_ref = refs, None
    *seeds_ref, pooled_ref, phase_ref = refs
    start = pl.program_id(0) * _BLOCK
    _, n, r, v, valid = _pooled_block(start, _BLOCK, geometry)
    row = step_row(index_ref, offset)
    patch = _load_patches(input_ref, order_ref, row, n, r, v, valid, geometry,
                          dot_size(kernel_ref.shape[1]))  # fmt: skip
    best = phase = None
    for index, (a, b) in enumerate(_PHASES):
        z = bias_ref[...]
        for tap, (di, dj) in enumerate(_TAPS):
            z = z + jnp.dot(patch[a + di, b + dj], _load_tap(kernel_ref, tap))
        activation = jnp.maximum(z, 0.0)
        if best is None:
            best, phase = activation, jnp.zeros(activation.shape, jnp.int32)
        else:
            # Strictly greater: a tie keeps the earlier phase, the window's first maximum.
            better = activation > best
            best, phase = jnp.where(better, activation, best), jnp.where(better, index, phase)
    if dropped_shape is not None:
        channel = lax.broadcasted_iota(jnp.int32, (1, best.shape[1]), 1)
        seed = [_load_scalar(seeds_ref[0], row, word) for word in range(4)]
        bits = triton_random.rng_bit_generator_bits(
            seed, dropped_shape, (n[:, None], r[:, None], v[:, None], channel)
        )
        kept = bits < jnp.uint32(layers.dropout_threshold(cnn.DROPOUT_RATE))
        best = jnp.where(kept, best / (1.0 - cnn.DROPOUT_RATE), 0.0)
    store_block(pooled_ref, best, start)
    store_block(phase_ref, phase, start)


def _load_patches(input_ref, order_ref, row, n, r, v, valid, geometry: Geometry,
                  columns: int) -> dict[tuple[int, int], jax.Array]:  # fmt: skip
    """The 4x4 input patches of pooled positions (image n, pooled row r, pooled column v),
    each (M,) int32, as {(i, j): (M, columns) float32 rows at (2r + i - 1, 2v + j - 1)}, 0
    in the zero padding, past C_in and where `valid` is False. A 2x2 window's 3x3
    convolutions read these 16 rows, gathered once, not once per phase and tap (36 gathers;
    compiled for an H100, the live tiles spilled registers). With `order_ref` the input is
    the training set's uint8 images, of which image n is order[row, n] (`row` (1,) int32),
    scaled to [-1, 1]
    here as `preprocess.to_float` does; else activations."""
    if order_ref is not None:
        n = pltriton.load(order_ref.at[row, n], mask=valid, other=0)
    column = lax.broadcasted_iota(jnp.int32, (1, columns), 1)
    patch = {}
    for i in range(4):
        for j in range(4):
            rows, inside = _tap_rows(n, 2 * r + i - 1, 2 * v + j - 1, geometry)
            values = _load_rows(input_ref, rows, valid & inside, columns)
            if order_ref is not None:
                mask = (valid & inside)[:, None] & (column < input_ref.shape[1])
                values = jnp.where(mask, to_float(values), 0.0)
            patch[i, j] = values
    return patch


def _load_scalar(ref, row: jax.Array, column: int) -> jax.Array:
    """ref[row, column] of a 2-D ref as a (1, 1) block; `row` (1,) int32."""
    return pltriton.load(ref.at[row[:, None], jnp.full((1, 1), column, jnp.int32)])


def _backward(
    conv_params: dict, residuals: Residuals, d_flat: jax.Array, interpret: bool | None
) -> tuple[jax.Array, ...]:
    """Both layers' gradients in partial sums, one row per program of `_BLOCK` of conv1's
    pooled positions: (conv2's kernel (programs, 9 * C1 * C2), conv2's bias (programs, C2),
    conv1's kernel (programs, 9 * C0 * C1), conv1's bias (programs, C1)) float32, whose sums
    over the rows are d loss / d each kernel (flattened as its (9, C_in, C_out) taps) and bias.

    Each program backpropagates d loss / d conv2's output (`d_flat`, d loss / d flat, through
    dropout, ReLU2 and, by phase2, pool2) to its block of conv2's input, conv1's pooled output, and
    from there through pool1 and ReLU1 to conv1's output. Summing over positions in every
    program at once, rather than in one program per tap, keeps the sums from being a serial
    loop over every position, and the gradients at conv1's output never leave the program."""
    conv1, conv2 = conv_params["conv1"]["kernel"], conv_params["conv2"]["kernel"]
    c0, c1, c2 = *conv1.shape[2:], conv2.shape[3]
    programs = pl.cdiv(residuals.geometry1.pooled_positions, _BLOCK)
    out_shape = tuple(
        jax.ShapeDtypeStruct((programs, width), jnp.float32)
        for width in (len(_TAPS) * c1 * c2, c2, len(_TAPS) * c0 * c1, c1)
    )
    body = functools.partial(
        _backward_kernel, geometry1=residuals.geometry1, geometry2=residuals.geometry2,
        offset=residuals.offset,
    )  # fmt: skip
    return triton_call(body, out_shape, (programs,), name="conv_backward", interpret=interpret)(
        conv2.reshape(len(_TAPS), c1, c2), residuals.images, residuals.order, residuals.index,
        residuals.pooled1, residuals.phase1, residuals.phase2, residuals.flat, d_flat,
    )  # fmt: skip


def _backward_kernel(
    kernel2_ref, images_ref, order_ref, index_ref, pooled1_ref, phase1_ref, phase2_ref,
    flat_ref, d_flat_ref, kernel2_sums_ref, bias2_sums_ref, kernel1_sums_ref, bias1_sums_ref, *,
    geometry1: Geometry, geometry2: Geometry, offset: int,
) -> None:  # fmt: skip
    """One program: `_BLOCK` of conv1's pooled positions, which are conv2's input positions
    (n, h, w). Through tap (di, dj), input (h, w) meets conv2's output (h - di + 1, w - dj +
    1), whose gradient d z2 is its pooled gradient if it is its window's first maximum
    (phase2) and 0 elsewhere, pool2's dropped odd row or column included. So the block's
    terms of conv2's kernel gradient at that tap are pooled1.T @ d z2 there, of its bias
    gradient the sum of d z2 at the block's own positions (the centre tap), and d pooled1 =
    sum over taps of d z2 @ kernel2[di, dj].T, zero where pooled1 is 0 (ReLU1). Routed
    through phase1, that is d z1 at the block's windows, whose products with the 4x4 input
    patches they read are the block's terms of conv1's kernel gradient; its column sums, of
    the bias gradient."""
    program = pl.program_id(0)
    rows, n, h, w, valid = _pooled_block(program * _BLOCK, _BLOCK, geometry1)
    pooled1 = _load_rows(pooled1_ref, rows, valid)
    pooled_height, pooled_width = geometry2.pooled
    d_pooled1 = None
    for tap, (di, dj) in enumerate(_TAPS):
        h2, w2 = h - di + 1, w - dj + 1
        inside = (h2 >= 0) & (h2 < 2 * pooled_height) & (w2 >= 0) & (w2 < 2 * pooled_width)
        h2 = jnp.clip(h2, 0, 2 * pooled_height - 1)
        w2 = jnp.clip(w2, 0, 2 * pooled_width - 1)
        pooled_rows = (n * pooled_height + h2 // 2) * pooled_width + w2 // 2
        at_max = _load_rows(phase2_ref, pooled_rows, valid & inside) == (
            (h2 % 2) * 2 + w2 % 2
        )[:, None]  # fmt: skip
        d_pooled2 = _conv2_pooled_gradient(flat_ref, d_flat_ref, pooled_rows, valid & inside)
        d_z2 = jnp.where(at_max, d_pooled2, 0.0)
        _store_tap_sum(kernel2_sums_ref, program, tap, jnp.dot(pooled1.T, d_z2), pooled1.shape[1])
        if (di, dj) == (1, 1):
            store_block(bias2_sums_ref, jnp.sum(d_z2, axis=0, keepdims=True), program)
        term = jnp.dot(d_z2, _load_tap(kernel2_ref, tap).T)
        d_pooled1 = term if d_pooled1 is None else d_pooled1 + term
    d_pooled1 = jnp.where(pooled1 > 0.0, d_pooled1, 0.0)

    phase1 = _load_rows(phase1_ref, rows, valid)
    d_z1 = [jnp.where(phase1 == index, d_pooled1, 0.0) for index in range(len(_PHASES))]
    c0 = images_ref.shape[1]
    patch = _load_patches(images_ref, order_ref, step_row(index_ref, offset), n, h, w, valid,
                          geometry1, dot_size(c0))  # fmt: skip
    for tap, (di, dj) in enumerate(_TAPS):
        grad = sum(
            jnp.dot(patch[a + di, b + dj].T, d_z1[index])
            for index, (a, b) in enumerate(_PHASES)
        )
        _store_tap_sum(kernel1_sums_ref, program, tap, grad, c0)
    store_block(bias1_sums_ref, jnp.sum(d_pooled1, axis=0, keepdims=True), program)


def _store_tap_sum(sums_ref, program, tap: int, grad: jax.Array, c_in: int) -> None:
    """Row `program` of a (programs, 9 * C_in * C_out) sums ref, tap `tap`'s part: `grad`
    (C_in', C_out), of which rows past `c_in` are padding, not stored (they point one past
    the row's end, as `triton_blocks.store_block`'s do)."""
    c_out = grad.shape[1]
    channel = lax.broadcasted_iota(jnp.int32, (grad.shape[0], 1), 0)
    column = lax.broadcasted_iota(jnp.int32, (1, c_out), 1)
    columns = jnp.where(channel < c_in, (tap * c_in + channel) * c_out + column,
                        sums_ref.shape[1])  # fmt: skip
    pltriton.store(sums_ref.at[program, columns], grad, mask=(channel < c_in) & (column >= 0))


def _updates(
    conv_params: dict, conv_velocity: dict, sums: tuple[jax.Array, ...], rate: jax.Array,
    momentum: float, interpret: bool | None,
) -> tuple[dict, dict]:  # fmt: skip
    """(params, velocity) of conv1 and conv2 after their momentum steps, in one launch of 18
    programs, a kernel tap each, 9 per layer: each sums its tap's partial sums (`_backward`'s
    `sums`) and updates it in place; the first of each layer also its bias. `rate` is the
    learning rate as a (1, 1) block."""
    taps = len(_TAPS)
    # Per layer: kernel, its velocity, bias, its velocity; kernels as (9, C_in * C_out) rows
    # (the sums' layout), biases as (1, C_out) rows.
    arrays = [
        tree[name][kind].reshape((taps, -1) if kind == "kernel" else (1, -1))
        for name in ("conv2", "conv1")
        for kind in ("kernel", "bias")
        for tree in (conv_params, conv_velocity)
    ]
    new = triton_call(
        functools.partial(_updates_kernel, momentum=float(momentum)),
        tuple(jax.ShapeDtypeStruct(a.shape, a.dtype) for a in arrays), (2 * taps,),
        name="conv_updates", interpret=interpret,
        # The params and velocity are updated in place (each program writes its own tap).
        input_output_aliases={i: i for i in range(len(arrays))},
    )(*arrays, rate, *sums)  # fmt: skip
    params, velocity = {}, {}
    for name, (kernel, kernel_velocity, bias, bias_velocity) in zip(
        ("conv2", "conv1"), (new[:4], new[4:])
    ):
        shape = conv_params[name]["kernel"].shape
        params[name] = {"kernel": kernel.reshape(shape), "bias": bias.reshape(-1)}
        velocity[name] = {
            "kernel": kernel_velocity.reshape(shape), "bias": bias_velocity.reshape(-1)
        }
    return params, velocity


def _updates_kernel(*refs, momentum: float) -> None:
    """Programs 0..8: conv2's tap `program`, 9..17: conv1's tap `program - 9`. Refs: conv2's
    kernel (9, C1 * C2), kernel velocity, bias (1, C2), bias velocity, conv1's the same; the
    rate (1, 1); `_backward`'s four sums; then the 8 outputs, aliasing the first 8 refs."""
    rate = refs[8][...]
    program = pl.program_id(0)
    taps = len(_TAPS)
    for layer in range(2):
        params = refs[4 * layer : 4 * layer + 4]
        new_params = refs[13 + 4 * layer : 13 + 4 * layer + 4]
        kernel_sums_ref, bias_sums_ref = refs[9 + 2 * layer : 11 + 2 * layer]

        @pl.when(program // taps == layer)
        def _update_layer():
            tap = program % taps
            width = params[0].shape[1]
            grad = _sum_rows(kernel_sums_ref, tap * width, width)
            momentum_update((*params[0:2], *new_params[0:2]), grad, rate, momentum, tap)

            @pl.when(tap == 0)
            def _update_bias():
                grad = _sum_rows(bias_sums_ref, 0, bias_sums_ref.shape[1])
                momentum_update((*params[2:4], *new_params[2:4]), grad, rate, momentum)


def _sum_rows(ref, start, width: int) -> jax.Array:
    """The sum over all rows of ref[:, start : start + width], as a (1, next power of two >=
    width) row whose padding is 0; `_SUM_ROWS` rows at a time."""
    column = lax.broadcasted_iota(jnp.int32, (1, pl.next_power_of_2(width)), 1)

    def add(block, total):
        rows = block * _SUM_ROWS + lax.broadcasted_iota(jnp.int32, (_SUM_ROWS, 1), 0)
        mask = (rows < ref.shape[0]) & (column < width)
        index = (jnp.minimum(rows, ref.shape[0] - 1), start + jnp.minimum(column, width - 1))
        values = pltriton.load(ref.at[index], mask=mask, other=0.0)
        return total + jnp.sum(values, axis=0, keepdims=True)

    total = jnp.zeros(column.shape, jnp.float32)
    return lax.fori_loop(0, pl.cdiv(ref.shape[0], _SUM_ROWS), add, total)



def _conv2_pooled_gradient(flat_ref, d_flat_ref, rows: jax.Array, valid: jax.Array
                           ) -> jax.Array:  # fmt: skip
    """d loss / d conv2's pooled ReLU output at `rows` (M,) int32, (M, C2) float32: its
    output went through dropout, so it is d flat / (1 - rate) where dropout kept a unit that
    was > 0 (ReLU's gradient, as the routing to the window's maximum then needs it), else 0;
    0 where `valid` (M,) is False. Those units are the ones where flat > 0 (a dropped unit
    is 0), so the mask need not be kept."""
    passes = _load_rows(flat_ref, rows, valid) > 0.0
    d_flat = _load_rows(d_flat_ref, rows, valid)
    return jnp.where(passes, d_flat / (1.0 - cnn.DROPOUT_RATE), 0.0)


def _pooled_block(start, size: int, geometry: Geometry):
    """(rows, n, r, v, valid), each (size,): pooled positions start.. start + size - 1 as rows
    of a (P, C) array (clamped to P - 1) and as (image n, pooled row r, pooled column v);
    `valid` is False past the last."""
    pooled_height, pooled_width = geometry.pooled
    rows = start + lax.broadcasted_iota(jnp.int32, (size,), 0)
    valid = rows < geometry.pooled_positions
    rows = jnp.minimum(rows, geometry.pooled_positions - 1)
    n = rows // (pooled_height * pooled_width)
    return rows, n, (rows // pooled_width) % pooled_height, rows % pooled_width, valid


def _tap_rows(n, h, w, geometry: Geometry) -> tuple[jax.Array, jax.Array]:
    """(rows, inside): the rows of positions (n, h, w) in a (B*H*W, C) array, clamped into
    the image, and whether each lies inside it (outside is the convolution's zero padding)."""
    inside = (h >= 0) & (h < geometry.height) & (w >= 0) & (w < geometry.width)
    h = jnp.clip(h, 0, geometry.height - 1)
    w = jnp.clip(w, 0, geometry.width - 1)
    return (n * geometry.height + h) * geometry.width + w, inside


def _load_rows(ref, rows: jax.Array, valid: jax.Array, columns: int | None = None) -> jax.Array:
    """ref[rows] as an (M, columns) block for rows (M,) int32 within ref's (R, C): rows where
    `valid` (M,) is False, and columns past C (`columns` defaults to C), read as 0."""
    width = ref.shape[1]
    column = lax.broadcasted_iota(jnp.int32, (1, columns or width), 1)
    mask = valid[:, None] & (column < width)
    return pltriton.load(
        ref.at[rows[:, None], jnp.minimum(column, width - 1)], mask=mask, other=0
    )


def _load_tap(kernel_ref, tap) -> jax.Array:
    """Tap `tap`'s (C_in, C_out) matrix of a (9, C_in, C_out) kernel ref, as (dot_size(C_in),
    C_out): rows past C_in are 0 (conv1's 3 input channels make a 16-row dot operand)."""
    c_in, c_out = kernel_ref.shape[1:]
    rows = lax.broadcasted_iota(jnp.int32, (dot_size(c_in), 1), 0)
    columns = lax.broadcasted_iota(jnp.int32, (1, c_out), 1)
    return pltriton.load(
        kernel_ref.at[tap, jnp.minimum(rows, c_in - 1), columns],
        mask=(rows < c_in) & (columns < c_out), other=0.0,
    )  # fmt: skip
