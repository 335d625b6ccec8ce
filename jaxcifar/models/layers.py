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
from collections.abc import Mapping

import jax
import jax.numpy as jnp
from jax import lax

Params = dict[str, jax.Array]


def init_layers(key: jax.Array, kernel_shapes: Mapping[str, tuple[int, ...]]) -> dict[str, Params]:
    """{name: {"kernel": shape float32, "bias": (shape[-1],) float32}} for each layer, PyTorch-style.

    A kernel's last axis is its output, the rest its fan-in: (n_in, n_out) for dense layers,
    (H, W, C_in, C_out) HWIO for convolutions. Kernel and bias are U(+-1/sqrt(fan_in)).
    All numbers come from one uniform draw, sliced per layer, because on CPU each separate
    `jax.random` call costs ~1 s of XLA compile time and a model has a dozen of them.
    """
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


# Why conv1's im2col and the taps kernel gradient apply only in compiled loops: XLA:CPU's
# own convolution gradients run 17-30x slower inside a while loop than outside it (the seed
# CNN's scan epoch at batch 512: 59-62 s without either, 2.1 s with both), whereas outside,
# with library fusions off for large programs (`jaxcifar.cpu_fusions`), XLA's are the faster
# ones (whole step without vs with: 74-79 vs 94 ms at batch 128, 304-340 vs 357-385 ms at 512
# for im2col, 361-367 vs 445-449 ms at 512 for taps; benchmarks/README.md, finding 7).
def conv(
    params: Params, x: jax.Array, dtype: jnp.dtype, *, padding: str = "SAME", in_loop: bool = False
) -> jax.Array:
    """Stride-1 convolution, (N, H, W, C_in) NHWC -> (N, H', W', C_out) in `dtype`: H' = H
    with "SAME" padding, H - kernel + 1 with "VALID". Adds `params["bias"]` when the layer has one.

    `in_loop`: the caller traces this inside a compiled loop (`lax.scan`, a while loop). There,
    on CPU, for large inputs (`taps_kernel_gradient_pays`), the kernel gradient is
    `kernel_gradient_by_taps` instead of XLA's; the values are the same."""
    x, kernel = x.astype(dtype), params["kernel"].astype(dtype)
    if in_loop and taps_kernel_gradient_pays(x):
        y = _conv_with_taps_kernel_gradient(x, kernel, padding)
    else:
        y = _lax_conv(x, kernel, padding)
    return y + params["bias"].astype(dtype) if "bias" in params else y


def _lax_conv(x: jax.Array, kernel: jax.Array, padding: str) -> jax.Array:
    return lax.conv_general_dilated(
        x, kernel, window_strides=(1, 1), padding=padding, dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


# XLA:CPU computes a convolution's kernel gradient as a convolution that contracts over the
# batch and the whole image, and it slows sharply once the input outgrows the caches: 33 ms
# for 128 images of 16x16x32 (4 MiB), 270 ms for 512 (16 MiB), 2.3 s for 1024 of 31x31x16;
# in the fast recipe's step (narrow widths) the first block conv's took 2.9 s of 5.0 s. One
# matmul per kernel tap, batched over groups of images (`kernel_gradient_by_taps`), took
# 185 ms and 0.68 s for the large inputs, but 50 ms for the 4 MiB one and more than XLA's
# at 7x7 (benchmarks/README.md, finding 4; measured with XLA's default library fusions,
# before taps were kept to compiled loops: see the note above `conv`).
TAPS_MIN_POSITIONS = 15 * 15
TAPS_MIN_INPUT_BYTES = 6 * 2**20
# Rows (image positions) per batched-matmul group in `kernel_gradient_by_taps`: fastest or
# within 10% of it at every shape measured on the 2-core CPU (1,024 to 65,536 tried).
TAPS_GROUP_ROWS = 16_384


def taps_kernel_gradient_pays(x: jax.Array) -> bool:
    """Whether `conv` of NHWC `x` computes its kernel gradient by taps: on CPU, for inputs
    of at least TAPS_MIN_POSITIONS positions per image and TAPS_MIN_INPUT_BYTES in all.
    Elsewhere XLA's own (cuDNN's on a GPU) is kept."""
    height, width = x.shape[1:3]
    return (
        jax.default_backend() == "cpu"
        and height * width >= TAPS_MIN_POSITIONS
        and x.size * x.dtype.itemsize >= TAPS_MIN_INPUT_BYTES
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv_with_taps_kernel_gradient(x: jax.Array, kernel: jax.Array, padding: str) -> jax.Array:
    return _lax_conv(x, kernel, padding)


def _conv_forward(x, kernel, padding):
    return _lax_conv(x, kernel, padding), (x, kernel)


def _conv_backward(padding, residuals, g):
    x, kernel = residuals
    # The convolution is linear in x: XLA's transpose of it is the input gradient.
    transpose = jax.linear_transpose(lambda x: _lax_conv(x, kernel, padding), x)
    (dx,) = transpose(g)
    return dx, kernel_gradient_by_taps(x, g, kernel.shape, padding).astype(kernel.dtype)


_conv_with_taps_kernel_gradient.defvjp(_conv_forward, _conv_backward)


def kernel_gradient_by_taps(
    x: jax.Array, g: jax.Array, kernel_shape: tuple[int, ...], padding: str
) -> jax.Array:
    """The gradient with respect to the (KH, KW, C_in, C_out) HWIO kernel of a stride-1 NHWC
    convolution of `x` (N, H, W, C_in) with `padding`, given g = dLoss/doutput (N, H', W',
    C_out): float32 (KH, KW, C_in, C_out).

    Tap (i, j)'s gradient is sum over n, h, w of x_padded[n, h+i, w+j, :]^T g[n, h, w, :], a
    matmul contracting over all N*H'*W' positions; it is computed per group of whole images
    (about `TAPS_GROUP_ROWS` positions each) as one batched matmul, then summed over groups,
    with float32 accumulation.
    """
    kh, kw, c_in, c_out = kernel_shape
    n, out_h, out_w, _ = g.shape
    images_per_group = max(1, min(n, TAPS_GROUP_ROWS // (out_h * out_w)))
    while n % images_per_group:
        images_per_group -= 1
    groups = n // images_per_group
    g_rows = g.reshape(groups, -1, c_out)
    # Summing the groups' products after the batched matmul, not inside it as one
    # contraction: XLA:CPU ran the latter 2x slower (598 vs 291 ms, 256 images 31x31 24 -> 16).
    taps = [
        jnp.einsum(
            "gkc,gkd->gcd",
            window.reshape(groups, -1, c_in),
            g_rows,
            preferred_element_type=jnp.float32,
        ).sum(axis=0)
        for window in _tap_windows(x, (kh, kw), padding)
    ]
    return jnp.stack(taps).reshape(kh, kw, c_in, c_out)


def _tap_windows(x: jax.Array, kernel_hw: tuple[int, int], padding: str) -> list[jax.Array]:
    """The KH*KW shifted views of NHWC `x`, zero-padded for a stride-1 convolution with
    `padding`, that the kernel's taps multiply, in row-major (i, j) order: each (N, H', W',
    C), window (i, j) holding x_padded[n, h+i, w+j, :]."""
    kh, kw = kernel_hw
    pads = lax.padtype_to_pads(x.shape[1:3], kernel_hw, (1, 1), padding)
    padded = jnp.pad(x, ((0, 0), *pads, (0, 0)))
    out_h, out_w = padded.shape[1] - kh + 1, padded.shape[2] - kw + 1
    return [padded[:, i : i + out_h, j : j + out_w] for i in range(kh) for j in range(kw)]


# Up to this many input channels a 3x3 'same' convolution runs as one matmul (im2col). The
# seed CNN's conv1 reads 3 channels: XLA:CPU computes its kernel gradient as a convolution
# that contracts over the batch, a shape its convolution kernels handle badly, whereas as
# im2col it is one (N*H*W, 27)^T @ (N*H*W, 32) matmul. Measured on the 2-core CPU, whole
# train step, quiet machine (benchmarks/cnn_variants.py): 124 vs 160 ms at batch 128, 553 vs
# 638 ms at 512, even at 4 and 32. For conv2 (32 channels) im2col is slower (162 vs 152 ms).
# (Measured with XLA's default library fusions; it now applies in compiled loops only: see
# the note above `conv`.)
IM2COL_MAX_CHANNELS = 4


def conv_same(
    params: Params, x: jax.Array, dtype: jnp.dtype, *, in_loop: bool = False
) -> jax.Array:
    """Stride-1 'same' convolution with bias, (N, H, W, C_in) NHWC -> (N, H, W, C_out) in
    `dtype`, for any odd kernel size. Inside a compiled loop (`in_loop`) and for C_in <=
    IM2COL_MAX_CHANNELS, as one matmul over shifted input copies (`im2col_same`); else as
    `conv` (`lax.conv_general_dilated`)."""
    if in_loop and x.shape[-1] <= IM2COL_MAX_CHANNELS:
        return im2col_same(params, x, dtype)
    return conv(params, x, dtype, in_loop=in_loop)


def im2col_same(params: Params, x: jax.Array, dtype: jnp.dtype) -> jax.Array:
    """The same function as `conv(params, x, dtype)` with 'same' padding, as one matmul:
    (N, H, W, KH*KW*C_in) patches, the KH*KW shifted copies of the zero-padded input laid
    side by side, times the HWIO kernel flattened to (KH*KW*C_in, C_out), whose rows are in
    the same (i, j, c) order."""
    kh, kw, _, c_out = params["kernel"].shape
    patches = jnp.concatenate(_tap_windows(x.astype(dtype), (kh, kw), "SAME"), axis=-1)
    y = patches @ params["kernel"].astype(dtype).reshape(-1, c_out)
    return y + params["bias"].astype(dtype)


@jax.custom_vjp
def max_pool_2x2(x: jax.Array) -> jax.Array:
    """(N, H, W, C) -> (N, H//2, W//2, C), max over non-overlapping 2x2 windows; an odd H or W
    drops its last row or column, as torch's MaxPool2d(2) does.

    A reshape + max rather than `lax.reduce_window`: same forward values, but its gradient
    avoids select-and-scatter, which made a whole CNN training step ~2x slower on CPU
    (measured: 6.2 vs 13.2 ms at batch 4, 468 vs 677 ms at batch 128, 2 loaded cores).
    The gradient goes to the first maximum of each window in row-major order, as PyTorch's
    does; JAX's own gradient of a max splits it among tied maxima in several passes, and
    ties are common here (a flat image region gives equal conv outputs side by side). Quiet
    CPU, whole seed-CNN step: 124-129 vs 134-136 ms at batch 128, 551-564 vs 640-705 ms at
    512 (benchmarks/README.md).
    """
    return _max_pool_2x2(x)


def _max_pool_2x2(x: jax.Array) -> jax.Array:
    n, height, width, channels = x.shape
    x = x[:, : height // 2 * 2, : width // 2 * 2]
    return x.reshape(n, height // 2, 2, width // 2, 2, channels).max(axis=(2, 4))


def _max_pool_2x2_forward(x: jax.Array) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    y = _max_pool_2x2(x)
    return y, (x, y)


def _max_pool_2x2_backward(
    residuals: tuple[jax.Array, jax.Array], g: jax.Array
) -> tuple[jax.Array]:
    """d/dx of max_pool_2x2 at x, times g (N, H//2, W//2, C): g lands on each window's first
    maximum; the rest of x, a dropped odd row or column included, gets 0."""
    x, y = residuals
    n, height, width, channels = x.shape
    h2, w2 = height // 2, width // 2
    windows = x[:, : h2 * 2, : w2 * 2].reshape(n, h2, 2, w2, 2, channels)
    is_max = windows == y[:, :, None, :, None, :]
    # Window positions in row-major order: (0, 0), (0, 1), (1, 0), (1, 1).
    taken = jnp.zeros_like(y, dtype=bool)
    grads = {}
    for i, j in ((0, 0), (0, 1), (1, 0), (1, 1)):
        first = is_max[:, :, i, :, j] & ~taken
        grads[i, j] = jnp.where(first, g, jnp.zeros_like(g))
        taken = taken | first
    rows = [jnp.stack([grads[i, 0], grads[i, 1]], axis=3) for i in (0, 1)]  # (n, h2, w2, 2, c)
    dx = jnp.stack(rows, axis=2).reshape(n, h2 * 2, w2 * 2, channels)
    return (jnp.pad(dx, ((0, 0), (0, height - h2 * 2), (0, width - w2 * 2), (0, 0))),)


max_pool_2x2.defvjp(_max_pool_2x2_forward, _max_pool_2x2_backward)


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
    and scale the survivors by 1/(1-rate), as torch.nn.Dropout does."""
    if not train or rate == 0.0:
        return x
    if rng is None:
        raise ValueError("dropout with train=True needs an rng key")
    # Draw the mask from XLA's RngBitGenerator, seeded by four words of `rng`: on CPU the
    # default threefry mask of the seed CNN's (128, 8, 8, 16) activations took 21.7 s to
    # compile against 1.2 s this way (benchmarks/README.md), at the same step time.
    seed_words = jax.random.bits(rng, (4,), jnp.uint32)
    mask_key = jax.random.wrap_key_data(seed_words, impl="rbg")
    keep = jax.random.bernoulli(mask_key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))
