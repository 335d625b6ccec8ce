"""A multilayer perceptron as pure functions, the JAX twin of `jaxcifar.scratch`'s network.

Default 784-500-50-10 with sigmoid activations (the scratch notebook's MNIST network).
`apply` takes (N, n_in) float inputs, or NHWC images (N, H, W, C) that it flattens row-major
(`jaxcifar.data.preprocess.flatten`), so it trains on any dataset's images unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from jaxcifar import config
from jaxcifar.data.preprocess import flatten
from jaxcifar.models import layers

ACTIVATIONS = {name: getattr(jax.nn, name) for name in config.ACTIVATIONS}


def init(key: jax.Array, layer_sizes: Sequence[int] = config.MLP_LAYER_SIZES) -> dict:
    """{"dense1": {"kernel": (sizes[0], sizes[1]), "bias": (sizes[1],)}, "dense2": ..., ...}
    float32, PyTorch-default initialised (U(+-1/sqrt(fan_in)) for kernel and bias)."""
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
    """Logits (N, n_out) float32 (no activation on the last layer) for `x` (N, n_in) or (N, H, W, C).

    The MLP has no dropout, so `train` and `rng` are accepted for a uniform model interface
    and ignored. `dtype` is the compute dtype; parameters are cast at use.
    """
    del train, rng
    act = ACTIVATIONS[activation]
    h = flatten(x) if x.ndim > 2 else x
    num_layers = len(params)
    for i in range(1, num_layers):
        h = act(layers.dense(params[f"dense{i}"], h, dtype))
    return layers.dense(params[f"dense{num_layers}"], h, dtype).astype(jnp.float32)
