"""`jaxcifar.fused.triton_blocks` on its own: padded block loads and masked block stores at
static and traced positions, `dot_size`, `step_row` and `momentum_update`, in tiny kernels
run in Pallas' interpret mode, against NumPy. The kernels' jaxprs show which refs' reads and
writes are masked, as the Triton kernels on a GPU need (interpret mode drops writes past an
array's end whether masked or not)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import pallas as pl

from jaxcifar.fused.triton_blocks import (
    _block_indices, _inside, dot_size, load_block, momentum_update, step_row, store_block,
    triton_call,
)  # fmt: skip

SHAPE = (5, 11)  # the ref's: neither side a power of two
X = np.arange(1, 1 + SHAPE[0] * SHAPE[1], dtype=np.float32).reshape(SHAPE)  # no zeros

# (block shape, row, column, traced): inside (off the diagonal), the whole ref, one column
# past its end, padded on both sides, and traced positions (from the program id).
BLOCKS = [
    ((2, 3), 1, 4, False),
    (SHAPE, 0, 0, False),
    ((4, 8), 1, 4, False),
    ((8, 16), 0, 0, False),
    ((4, 8), 2, 5, True),
    ((8, 16), 3, 0, True),
]


def call(kernel, out_shapes, *args, **kwargs):
    """`kernel` interpreted over one program, float32 outputs of `out_shapes`."""
    out = tuple(jax.ShapeDtypeStruct(shape, jnp.float32) for shape in out_shapes)
    return triton_call(kernel, out, (1,), name="test_kernel", interpret=True, **kwargs)(*args)


def position(row: int, column: int, traced: bool):
    """(row, column) as Python ints, or as int32 scalars traced from the program id (0)."""
    if not traced:
        return row, column
    return pl.program_id(0) + row, pl.program_id(0) + column


def padded(x: np.ndarray, margin: int = 16) -> np.ndarray:
    """`x` with `margin` rows and columns of zeros after its end."""
    return np.pad(x, ((0, margin), (0, margin)))


def test_dot_size_is_the_smallest_power_of_two_of_at_least_the_size_and_16():
    """Every Triton dot operand side must be a power of two >= 16."""
    for n in range(1, 2100):
        size = 16
        while size < n:
            size *= 2
        assert dot_size(n) == size, n


@pytest.mark.parametrize("shape, row, column, traced", BLOCKS)
def test_load_block_reads_the_block_with_zeros_past_the_refs_end(shape, row, column, traced):
    """The block at (row, column), read in place where it lies inside, zeros past the end."""

    def kernel(x_ref, out_ref):
        out_ref[...] = load_block(x_ref, shape, *position(row, column, traced))

    (block,) = call(kernel, [shape], X)
    expected = padded(X)[row : row + shape[0], column : column + shape[1]]
    np.testing.assert_array_equal(block, expected)


@pytest.mark.parametrize("shape, row, column, traced", BLOCKS)
def test_store_block_writes_the_blocks_elements_inside_the_ref_only(shape, row, column, traced):
    """Elements of the block that fall inside the ref land at (row, column) onwards; the
    rest of the ref keeps its values and the block's elements past its end go nowhere."""
    value = -np.arange(1, 1 + shape[0] * shape[1], dtype=np.float32).reshape(shape)

    def kernel(x_ref, value_ref, out_ref):
        store_block(out_ref, value_ref[...], *position(row, column, traced))

    (out,) = call(kernel, [SHAPE], X, value, input_output_aliases={0: 0})
    expected = X.copy()
    height, width = min(shape[0], SHAPE[0] - row), min(shape[1], SHAPE[1] - column)
    expected[row : row + height, column : column + width] = value[:height, :width]
    np.testing.assert_array_equal(out, expected)


def test_block_indices_point_one_past_the_end_and_mask_those_elements():
    """Indices past the ref's end are its size (one past), never a real element's index, and
    only the elements inside are marked inside."""
    rows, columns, inside = _block_indices(SHAPE, (8, 16), 2, 3)
    np.testing.assert_array_equal(rows, [[2], [3], [4], [5], [5], [5], [5], [5]])
    np.testing.assert_array_equal(columns, [[3, 4, 5, 6, 7, 8, 9, 10] + [11] * 8])
    expected = np.zeros((8, 16), bool)
    expected[:3, :8] = True
    np.testing.assert_array_equal(inside, expected)


def test_inside_only_for_static_blocks_within_the_ref():
    """A block exactly filling the ref or its corner is inside, one a row or column further
    is not, and a traced row or column never is."""
    assert _inside(SHAPE, SHAPE, 0, 0) is True
    assert _inside(SHAPE, (2, 3), 3, 8) is True
    assert _inside(SHAPE, (2, 3), 4, 8) is False
    assert _inside(SHAPE, (2, 3), 3, 9) is False
    seen = []

    def traced(index):
        seen.extend([_inside(SHAPE, (1, 1), index, 0), _inside(SHAPE, (1, 1), 0, index)])
        return index

    jax.jit(traced)(jnp.int32(0))
    assert seen == [False, False]


def test_blocks_inside_are_plain_reads_and_writes_and_others_masked():
    """In the kernel's jaxpr, a block inside the ref is read and written as a plain slice, one
    past its end through a masked load and one masked store, and nothing else touches the
    refs: on a GPU an unmasked Triton store past the end would write out of bounds."""

    def kernel(x_ref, inside_ref, past_ref):
        store_block(inside_ref, load_block(x_ref, SHAPE))
        store_block(past_ref, load_block(x_ref, (8, 16)))

    args = jax.ShapeDtypeStruct(SHAPE, jnp.float32)
    out = (args, args)
    function = triton_call(kernel, out, (1,), name="test_kernel", interpret=True)
    (launch,) = [e for e in jax.make_jaxpr(function)(args).eqns if e.params.get("jaxpr")]
    ops = []
    for eqn in launch.params["jaxpr"].eqns:
        name = eqn.primitive.name
        if name in ("masked_load", "masked_swap"):
            parts = eqn.params["args_tree"].unflatten(eqn.invars)
            mask = parts[2] if name == "masked_load" else parts[3]
            ops.append((name, mask is not None))
        elif name in ("get", "swap"):
            ops.append((name, False))
    assert ops == [("get", False), ("swap", False), ("masked_load", True), ("masked_swap", True)]


@pytest.mark.parametrize("offset", [0, 3])
def test_step_row_is_the_index_plus_the_offset_as_a_one_element_vector(offset):
    """The (1,) int32 index plus the static offset, still a (1,) int32 vector."""

    def kernel(index_ref, out_ref):
        row = step_row(index_ref, offset)
        assert row.shape == (1,) and row.dtype == jnp.int32
        out_ref[...] = row

    out = jax.ShapeDtypeStruct((1,), jnp.int32)
    row = triton_call(kernel, out, (1,), name="test_kernel", interpret=True)(
        jnp.array([7], jnp.int32)
    )
    np.testing.assert_array_equal(row, [7 + offset])


# Small integers, momentum and learning rate powers of two: float32 computes them exactly.
MOMENTUM, RATE = 0.5, 0.25
PARAM = np.arange(18, dtype=np.float32).reshape(6, 3)
VELOCITY = (np.arange(18, dtype=np.float32).reshape(6, 3) % 5) - 2.0
GRAD = np.arange(16, dtype=np.float32).reshape(4, 4) - 6.0
GRAD[:, 3] = 1000.0  # padding past the arrays' 3 columns: never stored


@pytest.mark.parametrize("row, traced", [(0, False), (2, False), (3, True)])
def test_momentum_update_is_optax_sgds_step_on_the_blocks_rows(row, traced):
    """Rows row.. row + 4 (those inside) of param and velocity take v' = g + m v and
    p' = p - lr v', as optax.sgd with momentum; other rows and the padding are untouched."""

    def kernel(param_ref, velocity_ref, grad_ref, rate_ref, new_param_ref, new_velocity_ref):
        block_row = position(row, 0, traced)[0]
        refs = (param_ref, velocity_ref, new_param_ref, new_velocity_ref)
        momentum_update(refs, grad_ref[...], rate_ref[...], MOMENTUM, block_row)

    rate = np.full((1, 1), RATE, np.float32)
    aliases = {0: 0, 1: 1}
    new_param, new_velocity = call(kernel, [PARAM.shape] * 2, PARAM, VELOCITY, GRAD, rate,
                                   input_output_aliases=aliases)  # fmt: skip
    rows = slice(row, min(row + GRAD.shape[0], PARAM.shape[0]))
    grad = GRAD[: rows.stop - rows.start, :3]
    want_velocity, want_param = VELOCITY.copy(), PARAM.copy()
    want_velocity[rows] = grad + MOMENTUM * VELOCITY[rows]
    want_param[rows] = PARAM[rows] - RATE * want_velocity[rows]
    np.testing.assert_array_equal(new_velocity, want_velocity)
    np.testing.assert_array_equal(new_param, want_param)


def test_momentum_update_steps_from_the_param_block_it_is_given():
    """Given the param block as already loaded, the step starts from it, not from the ref
    (here NaN, which no row of the result may then show but those it leaves alone)."""

    def kernel(param_ref, velocity_ref, grad_ref, rate_ref, given_ref, new_param_ref,
               new_velocity_ref):  # fmt: skip
        refs = (param_ref, velocity_ref, new_param_ref, new_velocity_ref)
        given = load_block(given_ref, GRAD.shape, 1)
        momentum_update(refs, grad_ref[...], rate_ref[...], MOMENTUM, 1, param=given)

    stale = np.full(PARAM.shape, np.nan, np.float32)
    rate = np.full((1, 1), RATE, np.float32)
    new_param, _ = call(kernel, [PARAM.shape] * 2, stale, VELOCITY, GRAD, rate, PARAM,
                        input_output_aliases={0: 0, 1: 1})  # fmt: skip
    want = stale.copy()
    want[1:5] = PARAM[1:5] - RATE * (GRAD[:, :3] + MOMENTUM * VELOCITY[1:5])
    np.testing.assert_array_equal(new_param, want)
