"""Checks of what a model's `apply` is given, made once at that public boundary.

Without them a mistake fails deep in XLA (`dot_general requires contracting dimensions to
have the same shape`, `conv_general_dilated lhs feature dimension ...`) or, worse, not at
all: uint8 pixels, and NCHW images into the MLP, give logits without complaint. Each check
names the argument, what it found and what was expected.

They read only shapes, dtypes and dict keys, all known when jit traces a function, so a
jitted model pays nothing for them at run time; none reads an array's values.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax.numpy as jnp

# Channel counts of the images jaxcifar loads (grey, RGB): how NCHW is told from NHWC.
IMAGE_CHANNELS = (1, 3)


def check_layers(
    params: Mapping, names: Sequence[str], where: str, expected: str | None = None
) -> None:
    """Raise ValueError unless `params` is a dict of exactly the layers `names`, described as
    `expected` in the message (default: the names)."""
    if not isinstance(params, Mapping) or set(params) != set(names):
        found = tuple(params) if isinstance(params, Mapping) else type(params).__name__
        raise ValueError(
            f"{where}: params have layers {found}, expected {expected or tuple(names)}: the "
            "parameters of another model? (of a flax-style {'params': ...} dict, pass its "
            "'params' entry)"
        )


def check_float(x: jnp.ndarray, where: str) -> None:
    """Raise TypeError unless `x` is floating point: integer pixels would enter the model as
    0..255 and give logits of the wrong inputs."""
    dtype = jnp.result_type(x)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(
            f"{where}: x is {dtype}; expected float inputs (images in [-1, 1]): "
            "pass uint8 pixels through jaxcifar.data.to_float first"
        )


def check_uint8_pixels(dtype: jnp.dtype, where: str, rescaled: str) -> None:
    """Raise TypeError unless image `dtype` is uint8, the pixels as loaded, which the caller
    `rescaled` ("the step scales to [-1, 1]") itself: float images already through `to_float`
    would be scaled again, to about -1 everywhere, and 16-bit pixels read as 0..255. The
    message gives the fix each calls for."""
    if dtype != jnp.uint8:
        scaled = jnp.issubdtype(dtype, jnp.floating)
        fix = ("pass them as loaded, not through to_float" if scaled
               else "convert them (16-bit ones: // 257)")  # fmt: skip
        raise TypeError(
            f"{where}: images are {jnp.dtype(dtype)}; expected uint8 pixels, 0..255, which "
            f"{rescaled} itself: {fix}"
        )


def check_compute_dtype(dtype: jnp.dtype, where: str) -> None:
    """Raise TypeError unless the compute `dtype` is floating point: weights U(+-1/sqrt(fan_in))
    cast to an integer type are all 0, and the logits with them."""
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(
            f"{where}: dtype {jnp.dtype(dtype)}; expected a floating compute dtype (float32, "
            "bfloat16, float16)"
        )


def check_not_nchw(
    shape: tuple[int, ...], where: str, channels: Sequence[int] = IMAGE_CHANNELS
) -> None:
    """Raise ValueError when a 4-D `shape` has a channel count on axis 1 and none on axis 3:
    NCHW images (PyTorch's layout), which an NHWC model would read as C rows of H pixels
    with W channels."""
    if len(shape) == 4 and shape[1] in channels and shape[3] not in channels:
        raise ValueError(
            f"{where}: x {shape} looks like NCHW images (N, C, H, W); the models take NHWC "
            "(N, H, W, C): use x.transpose(0, 2, 3, 1)"
        )
