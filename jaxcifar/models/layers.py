"""Layer building blocks shared by the models: PyTorch-style initialisers and pure apply functions.

Parameters are plain dicts named like Flax's (`kernel`, `bias`), so a flax.linen model with the
same layer names accepts the same pytree. Initialisation copies PyTorch's defaults, so results
compare with the seed notebook: `nn.Linear`/`nn.Conv2d` use kaiming-uniform with a = sqrt(5),
which works out to U(-1/sqrt(fan_in), +1/sqrt(fan_in)) for the weights, and the bias is drawn
from the same interval.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
from jax import lax

from jaxcifar.data.dataset import is_count

Params = dict[str, jax.Array]


def init_layers(key: jax.Array, kernel_shapes: Mapping[str, tuple[int, ...]]) -> dict[str, Params]:
    """{name: {"kernel": shape float32, "bias": (shape[-1],) float32}} for each layer,
    PyTorch-style.

    A kernel's last axis is its output, the rest its fan-in: (n_in, n_out) for dense layers,
    (H, W, C_in, C_out) HWIO for convolutions. Kernel and bias are U(+-1/sqrt(fan_in)).
    All numbers come from one uniform draw, sliced per layer, because on CPU each separate
    `jax.random` call costs ~1 s of XLA compile time and a model has a dozen of them.

    Raises ValueError naming the layer whose kernel has a size that is not a positive integer
    (a layer of 0 units gave biases of +-inf; a class count of -1, a reshape error).
    """
    for name, shape in kernel_shapes.items():
        if not all(is_count(size) for size in shape):
            raise ValueError(f"init: {name} kernel {tuple(shape)}; sizes must be positive integers")
    sizes = [math.prod(shape) + shape[-1] for shape in kernel_shapes.values()]
    numbers = jax.random.uniform(key, (sum(sizes),), jnp.float32, -1.0, 1.0)
    params = {}
    offset = 0
    for (name, shape), size in zip(kernel_shapes.items(), sizes, strict=True):
        chunk = numbers[offset : offset + size] / math.sqrt(math.prod(shape[:-1]))
        params[name] = {"kernel": chunk[: -shape[-1]].reshape(shape), "bias": chunk[-shape[-1] :]}
        offset += size
    return params


def dense(params: Params, x: jax.Array, dtype: jnp.dtype) -> jax.Array:
    """(N, n_in) -> (N, n_out) in `dtype`; float32 params are cast at use (mixed precision)."""
    return x.astype(dtype) @ params["kernel"].astype(dtype) + params["bias"].astype(dtype)


def conv(params: Params, x: jax.Array, dtype: jnp.dtype, *, padding: str = "SAME") -> jax.Array:
    """Stride-1 convolution, (N, H, W, C_in) NHWC -> (N, H', W', C_out) in `dtype`: H' = H
    with "SAME" padding, H - kernel + 1 with "VALID". Adds `params["bias"]` when the layer
    has one. On a CPU its gradients are `_conv_with_canonical_gradients`'; the values are
    XLA's own."""
    x, kernel = x.astype(dtype), params["kernel"].astype(dtype)
    if jax.default_backend() == "cpu":
        y = _conv_with_canonical_gradients(x, kernel, padding)
    else:
        y = _lax_conv(x, kernel, _pads(x, kernel, padding))
    return y + params["bias"].astype(dtype) if "bias" in params else y


def _lax_conv(x: jax.Array, kernel: jax.Array, pads: Sequence[tuple[int, int]]) -> jax.Array:
    """The stride-1 NHWC x HWIO -> NHWC convolution with explicit (low, high) spatial pads."""
    return lax.conv_general_dilated(
        x, kernel, window_strides=(1, 1), padding=pads, dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


def _pads(x: jax.Array, kernel: jax.Array, padding: str) -> list[tuple[int, int]]:
    return lax.padtype_to_pads(x.shape[1:3], kernel.shape[:2], (1, 1), padding)


# Why a CPU gets its own gradient convolutions: XLA:CPU runs a convolution on its library
# kernels (Eigen, YNNPACK) only in the canonical NHWC x HWIO -> NHWC form. JAX's gradient
# convolutions are not in it (the kernel gradient contracts over the batch, the input gradient
# reads the kernel flipped, O and I swapped), and XLA:CPU's pass that rewrites them with
# transposes (ConvCanonicalization) visits only a program's entry computation: inside the body
# of a while loop (lax.scan, lax.fori_loop) they compile to a naive elemental loop nest. The
# seed CNN's step in a scan took 8.1-8.9 ms against 2.2-2.5 with the gradients written here
# (batch 4), 830-850 against 54-56 ms (batch 128), 530-600 against 230-250 ms (512), the
# "before" with the workarounds this replaced (conv1 as an im2col matmul, large kernel
# gradients by taps); outside loops both forms ran alike, being the same convolutions
# (benchmarks/README.md, finding 8). GPUs keep JAX's own: XLA:GPU maps gradient convolutions
# to cuDNN's backward kernels wherever they are, and transposes would only add kernels.
@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv_with_canonical_gradients(x: jax.Array, kernel: jax.Array, padding: str) -> jax.Array:
    return _lax_conv(x, kernel, _pads(x, kernel, padding))


def _conv_forward(x, kernel, padding):
    return _conv_with_canonical_gradients(x, kernel, padding), (x, kernel)


def _conv_backward(padding, residuals, g):
    """(dx, dkernel) for g = dLoss/doutput (N, H', W', C_out), each one canonical convolution:
    dx is g correlated with the spatially flipped kernel, its I and O swapped, padded to
    give back H x W; dkernel[i, j, c, d] = sum over n, h, w of x_padded[n, h+i, w+j, c] *
    g[n, h, w, d], a convolution of x's channels (as the batch) over the images (as the
    features) with g as its H' x W' window."""
    x, kernel = residuals
    pads = _pads(x, kernel, padding)
    flipped = jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2)
    full = [(k - 1 - low, k - 1 - high) for k, (low, high) in zip(kernel.shape[:2], pads)]
    dx = _lax_conv(g, flipped, full)
    dkernel = _lax_conv(x.transpose(3, 1, 2, 0), g.transpose(1, 2, 0, 3), pads)
    return dx, dkernel.transpose(1, 2, 0, 3)


_conv_with_canonical_gradients.defvjp(_conv_forward, _conv_backward)


def max_pool_2x2(x: jax.Array) -> jax.Array:
    """(N, H, W, C) -> (N, H//2, W//2, C), max over non-overlapping 2x2 windows; an odd H or W
    drops its last row or column, as torch's MaxPool2d(2) does.

    The gradient goes to the first maximum of each window in row-major order, as PyTorch's
    does; JAX's own gradient of a max splits it among tied maxima in several passes, and
    ties are common here (a flat image region gives equal conv outputs side by side). Its
    own gradient also avoids `lax.reduce_window`'s select-and-scatter, which made a whole
    CNN training step ~2x slower on CPU (measured: 6.2 vs 13.2 ms at batch 4, 468 vs 677 ms
    at batch 128, 2 loaded cores; benchmarks/README.md).
    """
    return _max_pool(x, (x.shape[1] % 2, x.shape[2] % 2))


# From this size of input on, `_max_pool_forward` computes the max and phase in one kernel
# of their own.
_ONE_PASS_BYTES = 4 * 2**20


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _max_pool(x: jax.Array, odd: tuple[int, int]) -> jax.Array:
    """`max_pool_2x2`, `odd` saying whether H and W are; without a gradient, one reduction."""
    n, height, width, channels = x.shape
    h2, w2 = height // 2, width // 2
    return x[:, : 2 * h2, : 2 * w2].reshape(n, h2, 2, w2, 2, channels).max(axis=(2, 4))


def _max_pool_forward(x: jax.Array, odd: tuple[int, int]) -> tuple[jax.Array, jax.Array]:
    """The pooled (N, H//2, W//2, C) and, as the residual, each window's phase: int8, the
    row-major position (0-3) of its first maximum, or 4 where the window holds a NaN.

    Keeping the phase, not x, is what makes the backward cheap: it reads a quarter-size
    int8 array and the gradient and writes dx in one elementwise pass, where deriving the
    phase from x there took two full-size passes (stacking the four corners' gradients, then
    interleaving them). The max and the phase come from the same knock-out of the four
    corners, so that one kernel can compute both in one pass over x.
    """
    even = x[:, : x.shape[1] - odd[0], : x.shape[2] - odd[1]]
    corners = [even[:, i::2, j::2] for i in (0, 1) for j in (0, 1)]  # row-major positions
    top, top_phase = _larger(corners[0], corners[1], 0, 1)
    bottom, bottom_phase = _larger(corners[2], corners[3], 2, 3)
    y, phase = _larger(top, bottom, top_phase, bottom_phase)
    phase = jnp.where(jnp.isnan(y), jnp.int8(4), phase)
    if x.size * x.dtype.itemsize >= _ONE_PASS_BYTES:
        # Left to itself XLA computes the phase again from x in whatever kernel reads it
        # next, reading x twice; the barrier makes one kernel write both. It also keeps y
        # out of its consumer's kernel, one launch more a pool, which costs more than a
        # pass over a small x (benchmarks/README.md).
        y, phase = lax.optimization_barrier((y, phase))
    return y, phase


def _larger(a: jax.Array, b: jax.Array, a_phase: int | jax.Array,
            b_phase: int | jax.Array) -> tuple[jax.Array, jax.Array]:  # fmt: skip
    """(max(a, b), the int8 phase of the larger, a's where they tie): b wins only where it
    is strictly larger, which keeps a window's first maximum."""
    b_wins = b > a
    return jnp.maximum(a, b), jnp.where(b_wins, jnp.int8(b_phase), jnp.int8(a_phase))


def _max_pool_backward(odd: tuple[int, int], phase: jax.Array, g: jax.Array) -> tuple[jax.Array]:
    """d/dx of `_max_pool` times g (N, H//2, W//2, C): g lands on each window's first
    maximum (its phase); the windows' other positions, and an odd H's last row or an odd
    W's last column, get 0."""
    # An odd side's last row or column as one more window (half of it past x's edge) whose
    # phase matches no position: dx comes out at x's size in the same select, with no pad
    # after it (XLA would fold such a pad into the next convolution's input gradient, but
    # not into its kernel gradient, and write dx in both sizes).
    grow = ((0, 0), (0, odd[0]), (0, odd[1]), (0, 0))
    phase, g = jnp.pad(phase, grow, constant_values=4), jnp.pad(g, grow)
    n, h2, w2, channels = g.shape
    row, column = (lax.broadcasted_iota(jnp.int8, (1, 1, 2, 1, 2, 1), axis) for axis in (2, 4))
    taken = phase[:, :, None, :, None] == 2 * row + column
    dx = jnp.where(taken, g[:, :, None, :, None], jnp.zeros((), g.dtype))
    dx = dx.reshape(n, 2 * h2, 2 * w2, channels)
    return (dx[:, : 2 * h2 - odd[0], : 2 * w2 - odd[1]],)


_max_pool.defvjp(_max_pool_forward, _max_pool_backward)


def global_max_pool(x: jax.Array) -> jax.Array:
    """(N, H, W, C) -> (N, C): the maximum over H and W. Its gradient goes to the first
    maximum in row-major order, as with `max_pool_2x2` and torch; JAX's own `max` splits it
    among ties."""
    n, height, width, channels = x.shape
    flat = x.reshape(n, height * width, channels)
    first = jnp.argmax(flat, axis=1, keepdims=True)  # argmax takes the first of ties
    return jnp.take_along_axis(flat, first, axis=1)[:, 0]


def dropout(x: jax.Array, rate: float, *, train: bool, rng: jax.Array | None) -> jax.Array:
    """Inverted dropout: identity unless `train`; then zero each unit with probability `rate`
    and scale the survivors by 1/(1-rate), as torch.nn.Dropout does. Same shape and dtype."""
    if not train or rate == 0.0:
        return x
    if rng is None:
        raise ValueError("dropout with train=True needs an rng key")
    return apply_dropout(x, dropout_keep(rng, x.shape, rate), rate)


def apply_dropout(x: jax.Array, keep: jax.Array, rate: float) -> jax.Array:
    """`x` with the units where bool mask `keep` (x's shape) is False zeroed and the others
    scaled by 1/(1-rate). Same shape and dtype."""
    return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))


def dropout_keep(rng: jax.Array, shape: tuple[int, ...], rate: float) -> jax.Array:
    """`dropout`'s mask: a `shape` bool array, True (kept) with probability 1 - `rate`."""
    return dropout_keep_from_seed(dropout_seed(rng), shape, rate)


def dropout_seed(rng: jax.Array) -> jax.Array:
    """The (4,) uint32 seed from which `dropout_keep` draws its mask for key `rng`. Unlike the
    mask, it may be drawn for many keys at once (`jax.vmap`): XLA's RngBitGenerator, which
    draws the mask, batches by drawing every mask from the first seed."""
    return jax.random.bits(rng, (4,), jnp.uint32)


def dropout_keep_from_seed(seed: jax.Array, shape: tuple[int, ...], rate: float) -> jax.Array:
    """`dropout_keep`'s `shape` bool mask drawn from its (4,) uint32 `dropout_seed`."""
    # The mask's bits come from XLA's RngBitGenerator: JAX's own threefry over the seed CNN's
    # (128, 8, 8, 16) activations took 21.7 s to compile on CPU against 1.2 s this way
    # (benchmarks/README.md, finding 2). Threefry rather than the backend's default algorithm
    # (Philox on CPU) draws them ~3.7x faster there: 0.74 against 2.74 ms a step at batch 128,
    # 26 against 95 us at batch 4 (finding 10).
    _, bits = lax.rng_bit_generator(
        seed, shape, jnp.uint32, algorithm=lax.RandomAlgorithm.RNG_THREE_FRY
    )
    return bits < jnp.uint32(dropout_threshold(rate))


def dropout_threshold(rate: float) -> int:
    """Dropout keeps a unit when its 32 random bits fall below this: (1 - rate) * 2**32."""
    return min(round((1.0 - rate) * 2.0**32), 2**32 - 1)
