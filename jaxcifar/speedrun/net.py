"""The airbench94 network as pure functions over plain pytrees.

`init(key) -> (params, batch_stats)`; `apply(params, batch_stats, images, train=...)` ->
(logits, batch_stats). Parameters are float32 and cast to the compute dtype at use; batch
norm statistics are computed in float32 whatever the compute dtype.

Parameter tree: {"whiten": {"kernel" (2,2,C,2*4*C), "bias"}, "block{1,2,3}": {"conv1":
{"kernel"}, "norm1": {"bias"}, "conv2": {"kernel"}, "norm2": {"bias"}}, "head": {"kernel"}}.
The whitening kernel is zero from `init`: `whitening.whitening_kernel` computes it from
training images, and the optimizer never changes it.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax.scipy.special import erf

from jaxcifar.models import layers

Params = dict[str, Any]
BatchStats = dict[str, Any]

WHITEN_PATCH = 2
BN_EPS = 1e-12
_SQRT_HALF = 0.5**0.5


def whiten_width(in_channels: int) -> int:
    """Output channels of the whitening conv: every eigenvector of the patch second moments
    (patch * patch * C of them) and its negative."""
    return 2 * WHITEN_PATCH * WHITEN_PATCH * in_channels


def max_blocks(height: int, width: int) -> int:
    """How many conv blocks a `height` x `width` image can pass through: the whitening conv
    takes WHITEN_PATCH - 1 pixels off each side length, each block's pooling halves what is
    left (rounding down), and the global max pool needs a pixel at the end."""
    side, blocks = min(height, width) - WHITEN_PATCH + 1, 0
    while side >= 2:
        side, blocks = side // 2, blocks + 1
    return blocks


def init(
    key: jax.Array,
    *,
    widths: tuple[int, ...],
    in_channels: int = 3,
    num_classes: int = 10,
) -> tuple[Params, BatchStats]:
    """Fresh (params, batch_stats), all float32, for conv blocks of `widths` channels.

    Conv and linear kernels start PyTorch-style (U(+-1/sqrt(fan_in)), `layers.init_layers`);
    each block conv's first min(C_in, C_out) filters are then set to the identity ("dirac"
    init), an implicit residual connection. BN biases and running means start at 0, running
    variances at 1, the whitening bias at 0 and its kernel at 0 (see the module docstring).
    """
    channels = (whiten_width(in_channels), *widths)
    shapes = {}
    for i, (c_in, c_out) in enumerate(zip(channels[:-1], channels[1:]), start=1):
        shapes[f"block{i}.conv1"] = (3, 3, c_in, c_out)
        shapes[f"block{i}.conv2"] = (3, 3, c_out, c_out)
    shapes["head"] = (widths[-1], num_classes)
    drawn = layers.init_layers(key, shapes)

    whiten_shape = (WHITEN_PATCH, WHITEN_PATCH, in_channels, channels[0])
    params: Params = {
        "whiten": {
            "kernel": jnp.zeros(whiten_shape, jnp.float32),
            "bias": jnp.zeros((channels[0],), jnp.float32),
        }
    }
    batch_stats: BatchStats = {}
    for i, width in enumerate(widths, start=1):
        block, stats = {}, {}
        for j in (1, 2):
            block[f"conv{j}"] = {"kernel": _dirac(drawn[f"block{i}.conv{j}"]["kernel"])}
            block[f"norm{j}"] = {"bias": jnp.zeros((width,), jnp.float32)}
            stats[f"norm{j}"] = {"mean": jnp.zeros((width,), jnp.float32),
                                 "var": jnp.ones((width,), jnp.float32)}  # fmt: skip
        params[f"block{i}"], batch_stats[f"block{i}"] = block, stats
    params["head"] = {"kernel": drawn["head"]["kernel"]}
    return params, batch_stats


def _dirac(kernel: jax.Array) -> jax.Array:
    """(3, 3, C_in, C_out) HWIO with output channel c < min(C_in, C_out) replaced by the
    filter that copies input channel c (centre tap 1, everything else 0), as torch's dirac_."""
    _, _, c_in, c_out = kernel.shape
    k = min(c_in, c_out)
    identity = jnp.zeros(kernel.shape[:3] + (k,), kernel.dtype).at[1, 1].set(jnp.eye(c_in, k))
    return kernel.at[..., :k].set(identity)


def batch_norm(
    params: Params,
    stats: dict[str, jax.Array],
    x: jax.Array,
    *,
    train: bool,
    momentum: float,
    eps: float = BN_EPS,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """BatchNorm over (N, H, W) of NHWC `x`, with a bias and no scale; statistics in float32.
    A running statistic keeps `momentum` of its value per training step.

    Training normalises by the batch's mean and (biased) variance and moves the running
    statistics toward them, the variance unbiased as torch does; evaluation uses the running
    ones. Returns (x's dtype output, new statistics).

    The variance is E[d^2] - E[d]^2 of d = x less the first image's channel means (a constant
    to the gradient): its two sums read x side by side, one pass that XLA fuses into one
    kernel with their gradients' too, where `x.var()` reads x again after the mean. The
    shift keeps the two sums from cancelling where the mean lies many spreads from zero
    (unshifted, 20 spreads cost up to 3e-4 of the variance); an image's mean, not one
    pixel, so that an outlier pixel cannot undo it. Compiled for an H100
    (benchmarks/gpu_programs.py; traced with the CPU's convolution gradients) the
    speedrun's step fell from 172 kernels to 157 (76 reductions to 62); on the 2-core CPU
    a run took the same time within noise;
    benchmarks/airbench_parity.py's checks pass as before.
    """
    x32 = x.astype(jnp.float32)
    if train:
        shift = jax.lax.stop_gradient(x32[0].mean(axis=(0, 1)))
        d = x32 - shift
        d_mean = d.mean(axis=(0, 1, 2))
        var = jnp.maximum(jnp.square(d).mean(axis=(0, 1, 2)) - jnp.square(d_mean), 0.0)
        mean = shift + d_mean
        count = x.size // x.shape[-1]
        stats = {
            "mean": momentum * stats["mean"] + (1 - momentum) * mean,
            "var": momentum * stats["var"] + (1 - momentum) * var * (count / max(count - 1, 1)),
        }
    else:
        mean, var = stats["mean"], stats["var"]
    y = (x32 - mean) * jax.lax.rsqrt(var + eps) + params["bias"]
    return y.astype(x.dtype), stats


def gelu(x: jax.Array) -> jax.Array:
    """torch.nn.GELU's default, the exact x * Phi(x), for any float `x`; same shape and dtype.

    Written with erf, as torch does, rather than `jax.nn.gelu(approximate=False)`'s erfc:
    XLA:CPU computes the value and gradient in 3 full-size passes with erf, 5 with erfc, and
    at (1024, 31, 31, 24) they took 157 ms against 323 on the 2-core CPU (the same numbers to
    5e-7): 10% of the fast recipe's CPU step (1.29 against 1.44 s, widths 16/32/32).
    Computed in float32 (torch's "opmath" for half types): in bfloat16, 1 + erf(x) keeps no
    correct digit below about x = -3.
    """
    x32 = x.astype(jnp.float32)
    return (x32 * 0.5 * (1.0 + erf(x32 * _SQRT_HALF))).astype(x.dtype)


def whiten(params: Params, images: jax.Array, dtype: jnp.dtype) -> jax.Array:
    """The whitening layer: its VALID WHITEN_PATCH x WHITEN_PATCH convolution of (N, H, W, C)
    images plus its bias, (N, H - 1, W - 1, whiten_width(C)) in `dtype`.

    Off the CPU, written as a sum over the kernel's taps and input channels (12 for RGB) of
    shifted images times the kernel's rows: XLA then computes it inside the kernel that
    applies GELU to it, where cuDNN wrote its 47 MB at batch 1,024 for that kernel to read
    back (compiled for an H100: 3.40 -> 3.31 GB a step once the whitening bias freezes,
    3.67 -> 3.63 while it trains; benchmarks/README.md). On the CPU the library convolution
    is faster (a speedrun run at widths 16/32/32 took 15.4-15.7 s written so, 14.5-14.6 as
    a convolution). Operands rounded to `dtype`, products summed in float32, as a
    convolution does."""
    if jax.default_backend() == "cpu":
        return layers.conv(params, images, dtype, padding="VALID")
    size = WHITEN_PATCH
    kernel = params["kernel"].astype(dtype).astype(jnp.float32)
    images = images.astype(dtype).astype(jnp.float32)
    height, width, channels = images.shape[1:]
    out_h, out_w = height - size + 1, width - size + 1
    y = jnp.zeros((), jnp.float32)
    for i in range(size):
        for j in range(size):
            shifted = images[:, i : i + out_h, j : j + out_w]
            for c in range(channels):
                y = y + shifted[..., c, None] * kernel[i, j, c]
    return y.astype(dtype) + params["bias"].astype(dtype)


def apply(
    params: Params,
    batch_stats: BatchStats,
    images: jax.Array,
    *,
    train: bool,
    bn_momentum: float,
    output_scale: float,
    dtype: jnp.dtype = jnp.float32,
) -> tuple[jax.Array, BatchStats]:
    """Logits (N, num_classes) float32, times `output_scale`, and the updated batch
    statistics (unchanged unless `train`) for float images (N, H, W, C), computed in `dtype`."""
    x = gelu(whiten(params["whiten"], images, dtype))
    new_stats: BatchStats = {}
    for i in range(1, len(batch_stats) + 1):
        name = f"block{i}"
        block, stats = params[name], batch_stats[name]
        x = layers.max_pool_2x2(layers.conv(block["conv1"], x, dtype))
        x, norm1 = batch_norm(block["norm1"], stats["norm1"], x, train=train, momentum=bn_momentum)
        x = layers.conv(block["conv2"], gelu(x), dtype)
        x, norm2 = batch_norm(block["norm2"], stats["norm2"], x, train=train, momentum=bn_momentum)
        x = gelu(x)
        new_stats[name] = {"norm1": norm1, "norm2": norm2}
    # torch's MaxPool2d(3) on the final 3x3, gradient to the first of tied maxima as there:
    # the identity-initialised convs copy a flat image region's equal values through every
    # block, and splitting among ties changed conv-kernel gradients by up to 7% against
    # airbench (benchmarks/airbench_parity.py).
    features = layers.global_max_pool(x)
    logits = features @ params["head"]["kernel"].astype(dtype)
    return (logits * output_scale).astype(jnp.float32), new_stats
