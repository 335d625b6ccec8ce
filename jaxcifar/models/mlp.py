"""A multilayer perceptron as pure functions, the JAX twin of `jaxcifar.scratch`'s network.

Default 784-500-50-10 with sigmoid activations (the scratch notebook's MNIST network).
`apply` takes (N, n_in) float inputs, or NHWC images (N, H, W, C) that it flattens row-major
(`jaxcifar.data.preprocess.flatten`), so it trains on any dataset's images unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp

from jaxcifar import config
from jaxcifar.data.preprocess import flatten
from jaxcifar.models import checks, layers

ACTIVATIONS = {name: getattr(jax.nn, name) for name in config.ACTIVATIONS}


def init(key: jax.Array, layer_sizes: Sequence[int] = config.MLP_LAYER_SIZES) -> dict:
    """{"dense1": {"kernel": (sizes[0], sizes[1]), "bias": (sizes[1],)}, "dense2": ..., ...}
    float32, PyTorch-default initialised (U(+-1/sqrt(fan_in)) for kernel and bias).

    Raises ValueError unless `layer_sizes` holds two or more positive integers (inputs, any
    hidden layers, outputs)."""
    if len(layer_sizes) < 2:
        raise ValueError(
            f"mlp.init: layer_sizes {tuple(layer_sizes)}; expected inputs, any hidden sizes "
            "and outputs, e.g. (784, 500, 50, 10)"
        )
    pairs = zip(layer_sizes[:-1], layer_sizes[1:], strict=True)
    return layers.init_layers(key, {f"dense{i}": pair for i, pair in enumerate(pairs, start=1)})


def apply(
    params: dict,
    x: jax.Array,
    *,
    train: bool = False,
    rng: jax.Array | None = None,
    dtype: jnp.dtype = jnp.float32,
    activation: str = "sigmoid",
) -> jax.Array:
    """Logits (N, n_out) float32 (no activation on the last layer) for `x` (N, n_in) or
    (N, H, W, C).

    The MLP has no dropout, so `train` and `rng` are accepted for a uniform model interface
    and ignored. `dtype` is the compute dtype; parameters are cast at use.

    Raises:
      TypeError: `x` is not floating point (uint8 pixels: `jaxcifar.data.to_float` first).
      TypeError: `dtype` is not a floating type.
      ValueError: `params` are not an MLP's, `x` looks like NCHW images, or its examples do
        not hold the n_in features params' dense1 takes; `activation` is not one of
        ACTIVATIONS.
    """
    del train, rng
    _check_inputs(params, x)
    checks.check_compute_dtype(dtype, "mlp.apply")
    if activation not in ACTIVATIONS:
        raise ValueError(
            f"mlp.apply: activation {activation!r}; expected one of {', '.join(ACTIVATIONS)}"
        )
    act = ACTIVATIONS[activation]
    h = flatten(x) if x.ndim > 2 else x
    num_layers = len(params)
    for i in range(1, num_layers):
        h = act(layers.dense(params[f"dense{i}"], h, dtype))
    return layers.dense(params[f"dense{num_layers}"], h, dtype).astype(jnp.float32)


def _check_inputs(params: dict, x: jax.Array) -> None:
    """`apply`'s checks of its arguments (see `models.checks`): shapes, dtypes, keys only."""
    count = len(params) if isinstance(params, Mapping) else 0
    names = [f"dense{i}" for i in range(1, max(count, 1) + 1)]
    checks.check_layers(params, names, "mlp.apply", "('dense1', 'dense2', ...)")
    checks.check_float(x, "mlp.apply")
    shape = jnp.shape(x)
    # The MLP cannot know its images' layout: NCHW flattens to as many features as NHWC, in
    # another order, so parameters trained on NHWC images would silently score noise.
    checks.check_not_nchw(shape, "mlp.apply")
    n_in = params["dense1"]["kernel"].shape[0]
    # A 1-D x is one example, (n_in,) -> (n_out,), as a matrix product takes it.
    features = math.prod(shape[1:]) if len(shape) > 1 else math.prod(shape)
    if features != n_in:
        one = math.prod(shape) == n_in
        one_example = " (one example: add the batch axis, x[None])" if one else ""
        raise ValueError(
            f"mlp.apply: x {shape}{one_example}: expected (N, {n_in}) inputs or images of "
            f"{n_in} values each, the features params' dense1 takes"
        )
