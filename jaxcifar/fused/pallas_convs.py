"""The seed CNN's convolutional part trained in Pallas kernels: `features_forward`, then,
once the head has given d loss / d flat, `features_backward_update`.

Five launches a step do what XLA spreads over dozens of kernels (38 in XLA:CPU's program of
`fused.step.xla_features_step`, counted from its HLO: two convolutions forward and backward,
bias adds, ReLUs, poolings, dropout and their gradients, the momentum updates):
1. conv1 -> ReLU -> 2x2 max pool, 16 pooled positions per program;
2. conv2 -> ReLU -> 2x2 max pool -> dropout, giving the head's input;
3. (after the head) d loss / d conv2's input, through conv2 transposed, pool1 and ReLU1;
4. conv2's and 5. conv1's kernel and bias gradients and their SGD-with-momentum updates, one
   program per kernel tap.
With `pallas_head` that makes the whole training step six kernels of ours, where the launch
count is what bounds the seed recipe's batch-4 step on a GPU (issue #9, part A); XLA's own
kernels remain for the batch gather and the dropout mask's random bits
(`layers.dropout_keep`, so that both paths draw the same masks).

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

from jaxcifar.fused.pallas_head import dot_size
from jaxcifar.models import cnn, layers

# The 2x2 window's positions in row-major order; a pooled value's phase is its index here.
_PHASES = ((0, 0), (0, 1), (1, 0), (1, 1))
# The 3x3 kernel's taps (di, dj) in HWIO order: a kernel (3, 3, C_in, C_out) is the
# (9, C_in, C_out) array of tap matrices di * 3 + dj.
_TAPS = tuple((di, dj) for di in range(3) for dj in range(3))
# Pooled positions per program of the forward and input-gradient kernels (the dots' rows):
# Triton's smallest dot operand.
_BLOCK = 16
# Pooled positions per loop iteration of the kernel-gradient kernels, which sum over all of
# them in one program per tap. Compiled for an H100 (benchmarks/triton_resources.py), Triton
# pipelines the loop's gathers through shared memory: at 64, conv2's update takes 94 KiB of
# the 227 KiB a block may have; at 128 (half the iterations) it took 184 KiB, and at 256
# conv1's would not have fit.
_REDUCE_BLOCK = 64


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

    x: (B*H*W, C0) float32, the images. pooled1: conv1's pooled ReLU output (B*H/2*W/2, C1)
    float32, phase1: its windows' first-maximum phases (same shape) int32. flat: the head's
    input as (B*H/4*W/4, C2) float32, dropout applied; phase2 int32 and keep int8 (1 where
    dropout kept the unit), the same shape. geometry1, geometry2: the two layers' input
    geometries (Python ints: residuals live within one traced step)."""

    x: jax.Array
    pooled1: jax.Array
    phase1: jax.Array
    flat: jax.Array
    phase2: jax.Array
    keep: jax.Array
    geometry1: Geometry
    geometry2: Geometry


def features_train_step(conv_params: dict, x: jax.Array, rng: jax.Array, *,
                        interpret: bool | None = None) -> tuple[jax.Array, Callable]:  # fmt: skip
    """`fused.step.xla_features_step` in Pallas kernels: (flat (B, n) float32, finish), where
    `finish(conv_velocity, d_flat, learning_rate, momentum) -> (conv params, velocity)`.
    The dropout mask is `layers.dropout`'s for the same `rng`, so both train alike."""
    batch, height, width, _ = x.shape
    channels = conv_params[cnn.CONV_LAYERS[-1]]["kernel"].shape[-1]
    keep = layers.dropout_keep(rng, (batch, height // 4, width // 4, channels), cnn.DROPOUT_RATE)
    flat, residuals = features_forward(conv_params, x, keep, interpret=interpret)

    def finish(conv_velocity, d_flat, learning_rate, momentum):
        return features_backward_update(
            conv_params, conv_velocity, residuals, d_flat, learning_rate, momentum,
            interpret=interpret,
        )  # fmt: skip

    return flat, finish


def features_forward(
    conv_params: dict, x: jax.Array, keep: jax.Array, *, interpret: bool | None = None
) -> tuple[jax.Array, Residuals]:
    """`cnn.features(conv_params, x, train=True)` with dropout mask `keep`, in two kernels.

    `conv_params` {"conv1": {"kernel": (3, 3, C0, C1), "bias": (C1,)}, "conv2": {... (3, 3,
    C1, C2) ...}} float32; `x` (B, H, W, C0) float images; `keep` (B, H//4, W//4, C2) bool,
    True where dropout keeps a unit (`layers.dropout_keep`). Returns (flat (B, H//4*W//4*C2)
    float32, the residuals `features_backward_update` takes). `interpret=None` interprets
    the kernels when `jax.default_backend()` is "cpu" and compiles them (Triton) otherwise.
    """
    interpret = _interpret(interpret)
    batch, height, width, channels = x.shape
    geometry1 = Geometry(batch, height, width)
    geometry2 = Geometry(batch, *geometry1.pooled)
    x2d = x.astype(jnp.float32).reshape(batch * height * width, channels)
    pooled1, phase1 = _conv_relu_pool(conv_params["conv1"], x2d, geometry1, None, interpret)
    keep2d = keep.astype(jnp.int8).reshape(geometry2.pooled_positions, keep.shape[-1])
    flat, phase2 = _conv_relu_pool(conv_params["conv2"], pooled1, geometry2, keep2d, interpret)
    residuals = Residuals(x2d, pooled1, phase1, flat, phase2, keep2d, geometry1, geometry2)
    return flat.reshape(batch, -1), residuals


def features_backward_update(
    conv_params: dict, conv_velocity: dict, residuals: Residuals, d_flat: jax.Array,
    learning_rate: jax.Array, momentum: float, *, interpret: bool | None = None,
) -> tuple[dict, dict]:  # fmt: skip
    """One SGD-with-momentum step of conv1 and conv2 (optax.sgd's: v <- m*v + g, p <- p -
    lr*v) from `d_flat` (B, n) float32 = d loss / d `features_forward`'s flat, in three
    kernels. `conv_params` and `conv_velocity` as `features_forward` takes them (the velocity
    the same structure); `learning_rate` a float32 scalar, `momentum` a Python float.
    Returns (params, velocity), the same structures."""
    interpret = _interpret(interpret)
    d_flat2d = d_flat.astype(jnp.float32).reshape(residuals.flat.shape)
    rate = jnp.full((1, 1), learning_rate, jnp.float32)
    conv2_gradient = (residuals.flat, residuals.keep, d_flat2d)
    d_pooled1 = _conv2_input_gradient(
        conv_params["conv2"]["kernel"], residuals, conv2_gradient, interpret
    )
    new_params, new_velocity = {}, {}
    # conv2's update overwrites the kernel that the input gradient above reads: it takes that
    # gradient as an (unread) input too, which orders the two, so that XLA can update the
    # kernel in place rather than copy it first for the reader it could not otherwise order.
    for name, layer_input, geometry, gradient, phase, after in (
        ("conv2", residuals.pooled1, residuals.geometry2, conv2_gradient, residuals.phase2,
         (d_pooled1,)),
        ("conv1", residuals.x, residuals.geometry1, (d_pooled1,), residuals.phase1, ()),
    ):  # fmt: skip
        new_params[name], new_velocity[name] = _conv_update(
            conv_params[name], conv_velocity[name], layer_input, geometry, gradient, phase,
            rate, momentum, interpret, after,
        )  # fmt: skip
    return new_params, new_velocity


def _interpret(interpret: bool | None) -> bool:
    return jax.default_backend() == "cpu" if interpret is None else interpret


def _call(kernel: Callable, out_shape, grid: int, interpret: bool, name: str, warps: int = 4,
          **kwargs):  # fmt: skip
    """`pl.pallas_call` on the Triton backend over a 1-D grid of `grid` programs of `warps`
    warps each, every ref the whole array."""
    return pl.pallas_call(
        kernel, out_shape=out_shape, grid=(grid,), interpret=interpret,
        # Selects the Triton backend: on GPU this jax version otherwise lowers pallas_call
        # with Mosaic GPU.
        compiler_params=pltriton.CompilerParams(num_warps=warps), name=name, **kwargs,
    )  # fmt: skip


def _conv_relu_pool(
    layer: dict, layer_input: jax.Array, geometry: Geometry, keep: jax.Array | None,
    interpret: bool,
) -> tuple[jax.Array, jax.Array]:  # fmt: skip
    """(pooled (P, C_out) float32, phase (P, C_out) int32) of max_pool(relu(conv(input))),
    then dropout where `keep` (P, C_out) int8 is given; P = `geometry.pooled_positions`,
    `layer_input` (B*H*W, C_in)."""
    kernel, bias = layer["kernel"], layer["bias"]
    c_in, c_out = kernel.shape[2:]
    positions = geometry.pooled_positions
    out_shape = (
        jax.ShapeDtypeStruct((positions, c_out), jnp.float32),
        jax.ShapeDtypeStruct((positions, c_out), jnp.int32),
    )
    inputs = [layer_input, kernel.reshape(9, c_in, c_out), bias.reshape(1, c_out)]
    if keep is not None:
        inputs.append(keep)
    body = functools.partial(_forward_kernel, geometry=geometry, dropout=keep is not None)
    return _call(body, out_shape, pl.cdiv(positions, _BLOCK), interpret, "conv_relu_pool")(
        *inputs
    )


def _forward_kernel(input_ref, kernel_ref, bias_ref, *refs, geometry: Geometry,
                    dropout: bool) -> None:  # fmt: skip
    """One program: `_BLOCK` pooled positions of `_conv_relu_pool`. Refs: input (B*H*W,
    C_in), kernel (9, C_in, C_out), bias (1, C_out), [keep (P, C_out) int8,] then the outputs
    pooled (P, C_out) float32 and phase (P, C_out) int32."""
    *keep_ref, pooled_ref, phase_ref = refs
    rows, n, r, v, valid = _pooled_block(pl.program_id(0) * _BLOCK, _BLOCK, geometry)
    c_in_padded = dot_size(kernel_ref.shape[1])
    # A 2x2 window's 3x3 convolutions read a 4x4 patch of the input: its 16 rows are gathered
    # once, not once per phase and tap (36 gathers; compiled for an H100, the live tiles
    # spilled registers).
    patch = {}
    for i in range(4):
        for j in range(4):
            patch_rows, inside = _tap_rows(n, 2 * r + i - 1, 2 * v + j - 1, geometry)
            patch[i, j] = _load_rows(input_ref, patch_rows, valid & inside, c_in_padded)
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
    if dropout:
        kept = _load_rows(keep_ref[0], rows, valid) != 0
        best = jnp.where(kept, best / (1.0 - cnn.DROPOUT_RATE), 0.0)
    _store_rows(pooled_ref, rows, valid, best)
    _store_rows(phase_ref, rows, valid, phase)


def _conv2_input_gradient(
    kernel: jax.Array, residuals: Residuals, gradient: tuple[jax.Array, ...], interpret: bool
) -> jax.Array:
    """d loss / d conv1's pooled output (B*H/2*W/2, C1) float32, zero where that output is 0
    (so that routing it through pool1's phases gives d loss / d conv1's output): conv2's
    transposed convolution of d loss / d conv2's output, which `gradient` (flat, keep,
    d_flat) and phase2 give."""
    geometry = residuals.geometry2
    c_in, c_out = kernel.shape[2:]
    positions = geometry.batch * geometry.height * geometry.width
    body = functools.partial(_input_gradient_kernel, geometry=geometry)
    call = _call(
        body, jax.ShapeDtypeStruct((positions, c_in), jnp.float32), pl.cdiv(positions, _BLOCK),
        interpret, "conv2_input_gradient",
    )  # fmt: skip
    return call(kernel.reshape(9, c_in, c_out), residuals.pooled1, residuals.phase2, *gradient)


def _input_gradient_kernel(kernel_ref, pooled1_ref, phase_ref, *refs,
                           geometry: Geometry) -> None:  # fmt: skip
    """One program: `_BLOCK` positions (n, h, w) of conv2's input. d input[n, h, w] = sum
    over taps (di, dj) of d output[n, h - di + 1, w - dj + 1] @ kernel[di, dj].T, where d
    output at (h2, w2) is its pooled gradient if (h2, w2) is its window's first maximum (the
    phase recorded) and 0 elsewhere, pooling's dropped odd row or column included."""
    *gradient_refs, out_ref = refs
    positions = geometry.batch * geometry.height * geometry.width
    q = pl.program_id(0) * _BLOCK + lax.broadcasted_iota(jnp.int32, (_BLOCK,), 0)
    valid = q < positions
    q = jnp.minimum(q, positions - 1)
    n = q // (geometry.height * geometry.width)
    h, w = (q // geometry.width) % geometry.height, q % geometry.width
    pooled_height, pooled_width = geometry.pooled
    total = None
    for tap, (di, dj) in enumerate(_TAPS):
        h2, w2 = h - di + 1, w - dj + 1
        inside = (h2 >= 0) & (h2 < 2 * pooled_height) & (w2 >= 0) & (w2 < 2 * pooled_width)
        h2 = jnp.clip(h2, 0, 2 * pooled_height - 1)
        w2 = jnp.clip(w2, 0, 2 * pooled_width - 1)
        pooled_rows = (n * pooled_height + h2 // 2) * pooled_width + w2 // 2
        at_max = _load_rows(phase_ref, pooled_rows, valid & inside) == ((h2 % 2) * 2 + w2 % 2)[
            :, None
        ]
        d_output = jnp.where(at_max, _pooled_gradient(gradient_refs, pooled_rows, valid & inside),
                             0.0)  # fmt: skip
        term = jnp.dot(d_output, _load_tap(kernel_ref, tap).T)
        total = term if total is None else total + term
    pooled1 = _load_rows(pooled1_ref, q, valid)
    _store_rows(out_ref, q, valid, jnp.where(pooled1 > 0.0, total, 0.0))


def _conv_update(
    layer: dict, velocity: dict, layer_input: jax.Array, geometry: Geometry,
    gradient: tuple[jax.Array, ...], phase: jax.Array, rate: jax.Array, momentum: float,
    interpret: bool, after: tuple[jax.Array, ...] = (),
) -> tuple[dict, dict]:  # fmt: skip
    """(params, velocity) of one convolution layer after its momentum step: its kernel
    gradient is sum over output positions of input rows (B*H*W, C_in) at each tap times d
    output, its bias gradient the sum of d output; d output comes from the pooled gradient
    (`_pooled_gradient` of `gradient`) routed through `phase` (P, C_out) int32. `after`:
    arrays the kernel takes but does not read, so that it runs after what computes them."""
    kernel = layer["kernel"]
    c_in, c_out = kernel.shape[2:]
    arrays = (
        kernel.reshape(9, c_in, c_out),
        velocity["kernel"].reshape(9, c_in, c_out),
        layer["bias"].reshape(1, c_out),
        velocity["bias"].reshape(1, c_out),
    )
    body = functools.partial(
        _update_kernel, geometry=geometry, momentum=float(momentum), unread=len(after)
    )
    new_kernel, new_kernel_velocity, new_bias, new_bias_velocity = _call(
        body, tuple(jax.ShapeDtypeStruct(a.shape, a.dtype) for a in arrays), len(_TAPS),
        # 8 warps: 9 programs in all, each summing every position; compiled for an H100 (by
        # benchmarks/triton_resources.py), conv2's took 112 registers a thread against 239
        # with 4 warps, conv1's 80 against 157, neither spilling.
        interpret, "conv_update", warps=8,
        # The params and velocity are updated in place (each program writes its own tap).
        input_output_aliases={i: i for i in range(len(arrays))},
    )(*arrays, rate, layer_input, phase, *after, *gradient)  # fmt: skip
    return (
        {"kernel": new_kernel.reshape(kernel.shape), "bias": new_bias.reshape(c_out)},
        {
            "kernel": new_kernel_velocity.reshape(kernel.shape),
            "bias": new_bias_velocity.reshape(c_out),
        },
    )


def _update_kernel(
    kernel_ref, kernel_velocity_ref, bias_ref, bias_velocity_ref, rate_ref, input_ref,
    phase_ref, *refs, geometry: Geometry, momentum: float, unread: int,
) -> None:  # fmt: skip
    """Program `tap` (0..8): the kernel gradient of that tap, summed over every pooled
    position `_REDUCE_BLOCK` at a time and each window's four phases, and its momentum
    update; program 0 also updates the bias. `refs` are `unread` refs for ordering only,
    the gradient refs, then the four outputs, aliasing the first four refs."""
    *gradient_refs, new_kernel_ref, new_kernel_velocity_ref, new_bias_ref, new_bias_velocity = (
        refs[unread:]
    )
    tap = pl.program_id(0)
    di, dj = tap // 3, tap % 3
    c_in, c_out = kernel_ref.shape[1:]
    c_in_padded = dot_size(c_in)

    def add_block(block, sums):
        grad_kernel, grad_bias = sums
        rows, n, r, v, valid = _pooled_block(block * _REDUCE_BLOCK, _REDUCE_BLOCK, geometry)
        d_pooled = _pooled_gradient(gradient_refs, rows, valid)
        phase = _load_rows(phase_ref, rows, valid)
        for index, (a, b) in enumerate(_PHASES):
            d_output = jnp.where(phase == index, d_pooled, 0.0)
            input_rows, inside = _tap_rows(n, 2 * r + a + di - 1, 2 * v + b + dj - 1, geometry)
            inputs = _load_rows(input_ref, input_rows, valid & inside, c_in_padded)
            grad_kernel = grad_kernel + jnp.dot(inputs.T, d_output)
        return grad_kernel, grad_bias + jnp.sum(d_pooled, axis=0, keepdims=True)

    zeros = (jnp.zeros((c_in_padded, c_out), jnp.float32), jnp.zeros((1, c_out), jnp.float32))
    blocks = pl.cdiv(geometry.pooled_positions, _REDUCE_BLOCK)
    grad_kernel, grad_bias = lax.fori_loop(0, blocks, add_block, zeros)
    rate = rate_ref[...]
    rows = lax.broadcasted_iota(jnp.int32, (c_in_padded, 1), 0)
    columns = lax.broadcasted_iota(jnp.int32, (1, c_out), 1)
    mask = (rows < c_in) & (columns < c_out)
    index = (tap, jnp.minimum(rows, c_in - 1), columns)
    velocity = grad_kernel + momentum * pltriton.load(
        kernel_velocity_ref.at[index], mask=mask, other=0.0
    )
    kernel = pltriton.load(kernel_ref.at[index], mask=mask, other=0.0) - rate * velocity
    # Padding rows are stored to a row past the end, which the mask keeps from being written:
    # interpret mode writes masked-off elements back with their old values, and a clamped
    # index would write the last real row twice, the old value possibly last.
    index = (tap, jnp.where(rows < c_in, rows, c_in), columns)
    pltriton.store(new_kernel_ref.at[index], kernel, mask=mask)
    pltriton.store(new_kernel_velocity_ref.at[index], velocity, mask=mask)

    @pl.when(tap == 0)
    def _update_bias():
        bias_velocity = grad_bias + momentum * bias_velocity_ref[...]
        new_bias_ref[...] = bias_ref[...] - rate * bias_velocity
        new_bias_velocity[...] = bias_velocity


def _pooled_gradient(gradient_refs: tuple, rows: jax.Array, valid: jax.Array) -> jax.Array:
    """d loss / d a layer's pooled ReLU output at `rows` (M,) int32, (M, C) float32.

    `gradient_refs` is (d pooled,) for conv1, read as it is, or (flat, keep, d flat) for
    conv2, whose pooled output went through dropout: its gradient is d flat / (1 - rate)
    where dropout kept a unit that was > 0 (ReLU's gradient, as the routing to the window's
    maximum then needs it), else 0."""
    if len(gradient_refs) == 1:
        return _load_rows(gradient_refs[0], rows, valid)
    flat_ref, keep_ref, d_flat_ref = gradient_refs
    passes = (_load_rows(keep_ref, rows, valid) != 0) & (_load_rows(flat_ref, rows, valid) > 0.0)
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


def _store_rows(ref, rows: jax.Array, valid: jax.Array, value: jax.Array) -> None:
    """ref[rows] = value (M, C) for rows (M,) int32 where `valid` (M,) is True."""
    column = lax.broadcasted_iota(jnp.int32, (1, value.shape[1]), 1)
    # Rows not stored point past the end (see `_update_kernel`: not at a real, clamped row).
    rows = jnp.where(valid, rows, ref.shape[0])
    pltriton.store(ref.at[rows[:, None], column], value, mask=valid[:, None] & (column >= 0))


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
