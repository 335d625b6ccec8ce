"""2-D blocks of refs inside Pallas kernels written for Triton, shared by `pallas_head` and
`pallas_convs`: Triton tensors have power-of-two sizes and its dots take operands of at least
16 a side, while the arrays hold a batch of 4, 10 classes or 3 input channels. A kernel loads
such an array as a padded block (`load_block`, zeros past the array's end), computes on it,
and stores back only the elements inside the array (`store_block`). `triton_call` launches
such kernels.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

# Triton's tl.dot needs every operand dimension >= 16.
_MIN_DOT_DIM = 16

Ref = Any  # a kernel's Pallas ref (read with ref[...], indexed with ref.at[...])
Position = int | jax.Array  # a static offset, or a traced int32 scalar (from a program id)


def triton_call(kernel: Callable, out_shape: tuple[jax.ShapeDtypeStruct, ...],
                grid: tuple[int, ...], *, name: str,
                interpret: bool | None, warps: int = 4, **kwargs) -> Callable:  # fmt: skip
    """`pl.pallas_call` on the Triton backend over `grid` programs of `warps` warps each,
    every ref the whole array; `kwargs` go to it too. `interpret=None` interprets the kernel
    when `jax.default_backend()` is "cpu" (where Pallas does not compile) and compiles it
    (Triton) otherwise."""
    if interpret is None:
        interpret = jax.default_backend() == "cpu"
    return pl.pallas_call(
        kernel, out_shape=out_shape, grid=grid, interpret=interpret, name=name,
        # Selects the Triton backend: on GPU this jax version otherwise lowers pallas_call
        # with Mosaic GPU.
        compiler_params=pltriton.CompilerParams(num_warps=warps), **kwargs,
    )  # fmt: skip


def dot_size(n: int) -> int:
    """The smallest power of two >= max(n, 16): a size every Triton dot operand accepts."""
    return max(_MIN_DOT_DIM, 1 << (n - 1).bit_length())


def load_block(ref: Ref, shape: tuple[int, int], row: Position = 0,
               column: Position = 0) -> jax.Array:  # fmt: skip
    """The `shape` block of 2-D `ref` starting at (row, column); elements past the ref's end
    read 0. A plain static slice when the block lies inside the ref; `row` and `column` may
    be traced int32 scalars (from a program id), read through masked index arrays."""
    if _inside(ref.shape, shape, row, column):
        return ref[row : row + shape[0], column : column + shape[1]]
    rows, columns, inside = _block_indices(ref.shape, shape, row, column)
    return pltriton.load(ref.at[rows, columns], mask=inside, other=0)


def store_block(ref: Ref, value: jax.Array, row: Position = 0, column: Position = 0) -> None:
    """Store `value`'s elements that fall inside 2-D `ref`, the block starting at (row,
    column); the inverse of `load_block`."""
    if _inside(ref.shape, value.shape, row, column):
        ref[row : row + value.shape[0], column : column + value.shape[1]] = value
        return
    rows, columns, inside = _block_indices(ref.shape, value.shape, row, column)
    pltriton.store(ref.at[rows, columns], value, mask=inside)


def step_row(index_ref: Ref, offset: int) -> jax.Array:
    """A step's row of an epoch's arrays, as a (1,) int32 vector: the (1,) int32 ref's index
    plus a static `offset` (the step's place in an unrolled loop iteration)."""
    index = index_ref[...]
    return index + offset if offset else index


def momentum_update(refs: tuple[Ref, Ref, Ref, Ref], grad: jax.Array, learning_rate: jax.Array,
                    momentum: float, row: Position = 0,
                    param: jax.Array | None = None) -> None:  # fmt: skip
    """optax.sgd's momentum step on the block of rows from `row` of one parameter array:
    refs are (param, velocity, new param, new velocity), all (n, m) float32; grad is that
    block padded as `load_block` pads (its padding is not stored), float32, and learning_rate
    (1, 1); `param`, the block as already loaded, if it was (Triton loads it again if not).
    Stores v' = g + momentum * v and p' = p - learning_rate * v'."""
    param_ref, velocity_ref, new_param_ref, new_velocity_ref = refs
    if param is None:
        param = load_block(param_ref, grad.shape, row)
    new_velocity = grad + momentum * load_block(velocity_ref, grad.shape, row)
    new_param = param - learning_rate * new_velocity
    store_block(new_param_ref, new_param, row)
    store_block(new_velocity_ref, new_velocity, row)


def _inside(ref_shape, shape, row, column) -> bool:
    """Whether the block is known, statically, to lie inside the ref (never, for a traced
    row or column)."""
    return (
        isinstance(row, int) and isinstance(column, int)
        and row + shape[0] <= ref_shape[0] and column + shape[1] <= ref_shape[1]
    )  # fmt: skip


def _block_indices(ref_shape, shape, row, column):
    """(rows (shape[0], 1), columns (1, shape[1]), inside shape): a block's element indices
    into an array of `ref_shape`, and which lie inside it. An index past the array's end
    stays past it (one past), not clamped onto a real element: the Triton load or store is
    masked there, and interpret mode, which writes masked-off elements back with the values
    it read, drops indices out of range rather than write a real element twice."""
    rows = row + lax.broadcasted_iota(jnp.int32, (shape[0], 1), 0)
    columns = column + lax.broadcasted_iota(jnp.int32, (1, shape[1]), 1)
    inside = (rows < ref_shape[0]) & (columns < ref_shape[1])
    return jnp.minimum(rows, ref_shape[0]), jnp.minimum(columns, ref_shape[1]), inside
