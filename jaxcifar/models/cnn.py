"""The seed notebook's CNN as pure functions: `init(key) -> params`, `apply(params, x) -> logits`.

Conv(3->32, 3x3, pad 1) -> ReLU -> MaxPool 2 -> Conv(32->16, 3x3, pad 1) -> ReLU -> MaxPool 2 ->
Dropout(0.25) -> Flatten -> Linear 128 -> ReLU -> Linear 64 -> ReLU -> Linear 32 -> ReLU ->
Linear 16 -> ReLU -> Linear 10. On CIFAR-10 (32x32x3) that is 147,754 parameters.
Inputs are NHWC and the flatten is in NHWC order (so fc1's rows differ in order from PyTorch's
NCHW flatten; the function computed is the same family).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxcifar.data.dataset import is_count
from jaxcifar.data.preprocess import flatten
from jaxcifar.models import checks, layers

CONV_CHANNELS = (32, 16)
HIDDEN = (128, 64, 32, 16)
DROPOUT_RATE = 0.25
# Parameter names of the convolutional part and of the fully connected head, in order.
CONV_LAYERS = tuple(f"conv{i}" for i in range(1, len(CONV_CHANNELS) + 1))
DENSE_LAYERS = tuple(f"fc{i}" for i in range(1, len(HIDDEN) + 2))
POOL_SCALE = 2 ** len(CONV_CHANNELS)  # each conv layer's 2x2 pooling halves the sides


def flat_size(height: int, width: int, channels: int = CONV_CHANNELS[-1]) -> int:
    """fc1's inputs for `height` x `width` images: the last conv layer's pooled output,
    (H // 4, W // 4, its `channels`), flattened: 1024 for 32x32 images, 784 for 28x28."""
    return (height // POOL_SCALE) * (width // POOL_SCALE) * channels


def init(
    key: jax.Array, input_shape: tuple[int, int, int] = (32, 32, 3), num_classes: int = 10
) -> dict:
    """Parameters for inputs of `input_shape` (H, W, C), PyTorch-default initialised.

    Returns {"conv1", "conv2": {"kernel": (3, 3, C_in, C_out) HWIO, "bias"}, "fc1".."fc5":
    {"kernel": (n_in, n_out), "bias": (n_out,)}}, all float32; fc1's n_in is `flat_size`.

    Raises:
      ValueError: `input_shape` is not three positive integers with H, W >= 4 (two 2x2 poolings
        would leave fc1 no inputs): PyTorch's (C, H, W) order, (3, 32, 32), is one such; or
        `num_classes` is not a positive integer.
    """
    if (len(input_shape) != 3 or not all(map(is_count, input_shape))
            or min(input_shape[:2]) < POOL_SCALE):  # fmt: skip
        raise ValueError(
            f"cnn.init: input_shape {tuple(input_shape)}: expected (H, W, C), three positive "
            f"integers with H, W >= {POOL_SCALE}, e.g. (32, 32, 3) for CIFAR-10 or (28, 28, 1) "
            "for MNIST"
        )
    if not is_count(num_classes):  # else named as fc5's kernel size
        raise ValueError(f"cnn.init: num_classes must be a positive integer; got {num_classes!r}")
    height, width, channels = input_shape
    shapes = {}
    c_in = channels
    for i, c_out in enumerate(CONV_CHANNELS, start=1):
        shapes[f"conv{i}"] = (3, 3, c_in, c_out)
        c_in = c_out
    n_in = flat_size(height, width)
    for i, n_out in enumerate((*HIDDEN, num_classes), start=1):
        shapes[f"fc{i}"] = (n_in, n_out)
        n_in = n_out
    return layers.init_layers(key, shapes)


def apply(
    params: dict,
    x: jax.Array,
    *,
    train: bool = False,
    rng: jax.Array | None = None,
    dtype: jnp.dtype = jnp.float32,
) -> jax.Array:
    """Logits (N, num_classes) float32 for images `x` (N, H, W, C) float in [-1, 1].

    `train=True` turns dropout on and then needs `rng`. `dtype` is the compute dtype
    (e.g. bfloat16): parameters stay float32 and are cast at use; logits come back float32.

    Raises:
      TypeError: `x` is not floating point (uint8 pixels: `jaxcifar.data.to_float` first),
        or `dtype` is not a floating type.
      ValueError: `params` are not this model's, or `x` is not a batch of NHWC images of the
        channels and size (H // 4, W // 4) that `params` were made for.
    """
    _check_inputs(params, x)
    checks.check_compute_dtype(dtype, "cnn.apply")
    flat = features(params, x, train=train, rng=rng, dtype=dtype)
    return head(params, flat, dtype=dtype)


def features(
    params: dict,
    x: jax.Array,
    *,
    train: bool = False,
    rng: jax.Array | None = None,
    dtype: jnp.dtype = jnp.float32,
) -> jax.Array:
    """The convolutional part: images (N, H, W, C) -> (N, (H//4)*(W//4)*16) in `dtype`, the
    flattened (NHWC order) and, with `train`, dropped-out input of the fully connected head."""
    h = x
    for name in CONV_LAYERS:
        h = layers.conv(params[name], h, dtype)
        h = layers.max_pool_2x2(jax.nn.relu(h))
    h = layers.dropout(h, DROPOUT_RATE, train=train, rng=rng)
    return flatten(h)


def dropped_shape(params: dict, images_shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    """The shape of the activations `features` drops out for images of `images_shape` (N, H,
    W, C): conv2's pooled output, (N, H//4, W//4, conv2's channels), before flattening."""
    n, height, width, _ = images_shape
    channels = params[CONV_LAYERS[-1]]["kernel"].shape[-1]
    return n, height // POOL_SCALE, width // POOL_SCALE, channels


def head(params: dict, flat: jax.Array, *, dtype: jnp.dtype = jnp.float32) -> jax.Array:
    """The fully connected part: `features`' (N, n_in) output -> logits (N, num_classes)
    float32. Reads only params "fc1".."fc5"."""
    h = flat
    *hidden, last = DENSE_LAYERS
    for name in hidden:
        h = jax.nn.relu(layers.dense(params[name], h, dtype))
    return layers.dense(params[last], h, dtype).astype(jnp.float32)


def _check_inputs(params: dict, x: jax.Array) -> None:
    """`apply`'s checks of its arguments (see `models.checks`): shapes, dtypes, keys only."""
    checks.check_layers(params, (*CONV_LAYERS, *DENSE_LAYERS), "cnn.apply")
    checks.check_float(x, "cnn.apply")
    shape = jnp.shape(x)
    channels = params[CONV_LAYERS[0]]["kernel"].shape[2]
    checks.check_not_nchw(shape, "cnn.apply", (channels,))
    if len(shape) != 4 or shape[3] != channels:
        one_image = " (one image: add the batch axis, x[None])" if len(shape) == 3 else ""
        raise ValueError(
            f"cnn.apply: x {shape}{one_image}: expected NHWC images (N, H, W, {channels}), "
            f"the {channels} channels params' {CONV_LAYERS[0]} takes"
        )
    n_in = params[DENSE_LAYERS[0]]["kernel"].shape[0]
    found = flat_size(shape[1], shape[2], params[CONV_LAYERS[-1]]["kernel"].shape[-1])
    if found != n_in:
        raise ValueError(
            f"cnn.apply: x holds {shape[1]}x{shape[2]} images, which give {DENSE_LAYERS[0]} "
            f"{found} inputs, but params' {DENSE_LAYERS[0]} takes {n_in}: params made by "
            "cnn.init for another input_shape (32x32 images give 1024 inputs, 28x28 784)"
        )
