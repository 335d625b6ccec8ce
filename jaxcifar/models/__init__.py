"""Models as pure functions over parameter pytrees.

`cnn` and `mlp` each expose `init(key, ...) -> params` and
`apply(params, x, *, train=False, rng=None, dtype=float32) -> logits`. `build` binds a model's
shape options so training code sees one `Model(init(key), apply(params, x, ...))` interface.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax

from jaxcifar.config import MLP_LAYER_SIZES, MODELS
from jaxcifar.models import cnn, mlp


class Model(NamedTuple):
    """A model with its shape options bound: `init(key) -> params`,
    `apply(params, x, **kw) -> logits`."""

    init: Callable[[jax.Array], dict]
    apply: Callable[..., jax.Array]


def build(
    name: str,
    input_shape: tuple[int, int, int],
    num_classes: int,
    *,
    mlp_hidden: Sequence[int] = MLP_LAYER_SIZES[1:-1],
    mlp_activation: str = "sigmoid",
) -> Model:
    """The model `name` (`config.MODELS`) for (H, W, C) uint8-derived inputs and `num_classes`."""
    if name == "cnn":
        return Model(
            functools.partial(cnn.init, input_shape=tuple(input_shape), num_classes=num_classes),
            cnn.apply,
        )
    if name == "mlp":
        sizes = (math.prod(input_shape), *mlp_hidden, num_classes)
        return Model(
            functools.partial(mlp.init, layer_sizes=sizes),
            functools.partial(mlp.apply, activation=mlp_activation),
        )
    raise ValueError(f"unknown model {name!r}; expected one of {MODELS}")


def count_parameters(params: dict) -> int:
    """Total number of scalars in a parameter pytree."""
    return sum(leaf.size for leaf in jax.tree_util.tree_leaves(params))


__all__ = ["Model", "build", "cnn", "count_parameters", "mlp"]
