"""The seed CNN's dense head trained in two Pallas kernels: `head_train_step`.

Two launches do the head's whole training step: the forward pass fc1 -> ReLU -> ... -> fc5,
the mean softmax cross-entropy and the accuracy count, the backward pass, the SGD-with-momentum
update of all five layers (PyTorch-style, as `optax.sgd(lr, momentum=m)`: v <- m*v + g,
p <- p - lr*v), and the gradient with respect to the head's input, so the convolutional part
(XLA's ops, or `pallas_convs`' kernels) can backpropagate through the head. The first launch
is one program doing all of it but fc1's kernel update and the gradient with respect to the
input, which need fc1's whole kernel (512 KiB) again; the second (`_first_kernel_step`:
"first kernel" is fc1's weight matrix throughout) does those in parallel, a program per 32
of its rows.

Why: at batch 4 on a GPU the seed recipe's training step is bound by kernel launches (about 70
fusions per step), not by FLOPs; the head's share of them (about 30: five dense layers forward
and backward, the loss, and the optimizer updates) becomes two launches here.

Its dots take JAX's default float32 precision, as the XLA path's dots and convolutions do:
TF32 on tensor cores on an NVIDIA GPU since Ampere (Triton's "tf32" input precision), full
float32 on a CPU; `jax_default_matmul_precision="highest"` makes both paths full float32.

The kernels keep to what Pallas' GPU (Triton) backend lowers: 2-D blocks whose
sizes are powers of two, `jnp.dot`, elementwise ops, single-axis reductions, static slices of
refs and masked loads and stores; no reshapes or dynamic indexing. It reads and writes the
arrays as the caller has them (a batch of 4, fc5's 10 classes), padding their blocks with
zeros where every `jnp.dot` operand dimension must be at least 16, so the step needs no XLA
kernels to pad and unpad them.
On CPU, where Pallas does not compile, the kernels run in interpret mode.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from jaxcifar.fused.step import Records, StepBatch
from jaxcifar.fused.triton_blocks import (
    dot_size, load_block, momentum_update, step_row, store_block, triton_call,
)  # fmt: skip
from jaxcifar.models import cnn

LAYER_NAMES = cnn.DENSE_LAYERS

# fc1's kernel is (1024, 128) float32, 512 KiB: as one Triton tensor it could not be staged
# through shared memory for a dot (228 KiB per SM on an H100, less on older GPUs), so the
# head's program reads and multiplies fc1 (the forward pass only) in static tiles of this many
# rows (64 KiB each).
_INPUT_TILE_ROWS = 128
# Rows of fc1's kernel per program of `_first_kernel_step`, and its warps: compiled for an
# H100 at batch 4 (benchmarks/triton_resources.py), 128 rows with 4 warps spilled 1,944 bytes
# a thread, with 8 warps 256, as did 64 rows with 4; 32 rows with 4 warps: 168 registers,
# no spills (64 with 8: 188), and 32 programs to spread fc1's 3 MiB of traffic over.
_FIRST_KERNEL_ROWS = 32
_FIRST_KERNEL_WARPS = 4
# The logit of a padded class: softmax gives it probability exactly 0, yet it stays finite
# after the max is subtracted (-inf risks NaN, e.g. -inf - -inf or 0 * -inf).
_MASKED_LOGIT = -1e30


def head_train_step(
    head_params: dict,
    head_velocity: dict,
    flat: jax.Array,
    labels: jax.Array,
    learning_rate: float | jax.Array,
    momentum: float,
    *,
    label_rows: tuple[jax.Array, jax.Array] | None = None,
    row_offset: int = 0,
    records: tuple[jax.Array, jax.Array] | None = None,
    interpret: bool | None = None,
) -> tuple[dict, dict, jax.Array, jax.Array, jax.Array]:
    """One SGD-with-momentum step of the dense head, in two Pallas kernel launches.

    `head_params` and `head_velocity` are {"fc1".."fc5": {"kernel": (n_in, n_out) float32,
    "bias": (n_out,) float32}} (the velocity is optax.sgd's momentum trace, same structure),
    `flat` is the head's input (B, n_in of fc1) float, `labels` (B,) integers in
    [0, num_classes), or, with `label_rows` (order (S, B) int32, index int32 scalar), every
    label of a dataset (N,), of which the kernel reads the batch's, labels[order[row]], row =
    index + `row_offset` (a Python int, added in the kernel).
    `learning_rate` is a scalar and may be traced (a schedule); `momentum` is a Python float,
    baked into the kernel. `interpret=None` runs in Pallas' interpret mode when
    `jax.default_backend()` is "cpu", compiled (Triton) otherwise.

    Returns (new_params, new_velocity, d_flat, loss, correct): the updated params and velocity
    (same structure as the inputs), d_flat (B, n_in) float32 = dLoss/dflat at the old params,
    loss a float32 scalar (the mean cross-entropy before the update) and correct an int32
    scalar (rows whose argmax logit is the label, before the update). With `records`, an
    epoch's (losses (S,) float32, corrects (S,) int32), S the order's rows (1 without
    `label_rows`), the kernel writes them at that row and returns the two arrays in their
    stead (in place when the caller donates them, as the params).
    Params and velocity are updated in place when the caller donates them (jit's
    donate_argnums); otherwise XLA copies them first. Raises ValueError when the shapes,
    dtypes or layer names do not fit together.
    """
    layer_shapes = _check_layers(head_params, "head_params")
    velocity_shapes = _check_layers(head_velocity, "head_velocity")
    if velocity_shapes != layer_shapes:
        raise ValueError(
            f"head_velocity must have the shapes of head_params {layer_shapes}; "
            f"got {velocity_shapes}"
        )
    if label_rows is None:
        if row_offset:
            raise ValueError(f"row_offset needs label_rows; got {row_offset} without them")
        batch = _check_batch(flat, labels, layer_shapes)
        # The batch's labels are labels[order[0]] for order [[0, 1, ..., B-1]] (constants).
        label_rows = (jnp.arange(batch, dtype=jnp.int32)[None, :], 0)
    else:
        row = jax.ShapeDtypeStruct(label_rows[0].shape[1:], label_rows[0].dtype)
        batch = _check_batch(flat, row, layer_shapes)
        if labels.ndim != 1 or not jnp.issubdtype(labels.dtype, jnp.integer):
            raise ValueError(f"labels must be (N,) integers; got {labels.shape} {labels.dtype}")
    order, index = label_rows
    steps = order.shape[0]
    scalars = records is None  # the step's loss and correct count, not an epoch's records
    if scalars:
        records = (jnp.zeros(steps, jnp.float32), jnp.zeros(steps, jnp.int32))
    elif [(r.shape, r.dtype) for r in records] != [((steps,), jnp.float32), ((steps,), jnp.int32)]:
        raise ValueError(
            f"records must be ({steps},) float32 losses and int32 corrects, one per row of the "
            f"order; got {[(r.shape, str(r.dtype)) for r in records]}"
        )
    if jnp.ndim(learning_rate) != 0:
        raise ValueError(f"learning_rate must be a scalar; got shape {jnp.shape(learning_rate)}")

    # 2-D views, all free reshapes: biases as (1, n) rows, labels and records as (N, 1) and
    # (S, 1) columns, the rate as a (1, 1) block, the index as a (1,) vector. The kernel reads
    # and writes the arrays as they are, padding its blocks to Triton's sizes itself,
    # gathering the batch's labels and writing the step's records, so that no step spends XLA
    # kernels padding, unpadding, gathering and writing them.
    params_2d, velocity_2d = _bias_rows(head_params), _bias_rows(head_velocity)
    labels_2d = labels.astype(jnp.int32)[:, None]
    records_2d = tuple(record[:, None] for record in records)
    index_vector = jnp.reshape(index, (1,)).astype(jnp.int32)
    learning_rate_block = jnp.full((1, 1), learning_rate, jnp.float32)

    # fc1's kernel (the head's one large array) leaves the one-program kernel's updates: the
    # head reads it for the forward pass and `_first_kernel_step` does the rest in parallel.
    first = LAYER_NAMES[0]
    first_kernel, first_velocity = params_2d[first]["kernel"], velocity_2d[first]["kernel"]
    params_2d[first], velocity_2d[first] = _without_kernel(params_2d[first]), _without_kernel(
        velocity_2d[first]
    )
    num_classes = layer_shapes[LAYER_NAMES[-1]][1]
    kernel = functools.partial(
        _train_step_kernel, batch=batch, num_classes=num_classes, momentum=float(momentum),
        row_offset=row_offset,
    )  # fmt: skip
    layer_structs = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params_2d)
    num_layer_arrays = len(jax.tree.leaves(params_2d))
    flat = flat.astype(jnp.float32)
    out_shape = (
        layer_structs,
        layer_structs,
        jax.ShapeDtypeStruct((batch, first_kernel.shape[1]), jnp.float32),
        *(jax.ShapeDtypeStruct(record.shape, record.dtype) for record in records_2d),
    )
    # One program: 8 warps (compiled for an H100 with 4, its threads held 255 registers and
    # spilled 1,728 bytes each at batch 4; with 8, and the unpadded arrays read in masked
    # blocks, 120 bytes: benchmarks/triton_resources.py).
    new_params, new_velocity, d_first, losses, corrects = triton_call(
        kernel, out_shape, (), name="head_train_step", interpret=interpret, warps=8,
        # Params then velocity are the first inputs and the first outputs, leaf for leaf,
        # so each is updated in place rather than copied; the records are the next inputs
        # and the last outputs, written in place too.
        input_output_aliases={
            **{i: i for i in range(2 * num_layer_arrays)},
            2 * num_layer_arrays: 2 * num_layer_arrays + 1,
            2 * num_layer_arrays + 1: 2 * num_layer_arrays + 2,
        },
    )(
        params_2d, velocity_2d, *records_2d, first_kernel, flat, labels_2d,
        order.astype(jnp.int32), index_vector, learning_rate_block,
    )  # fmt: skip
    new_first_kernel, new_first_velocity, d_flat = _first_kernel_step(
        first_kernel, first_velocity, flat, d_first, learning_rate_block, float(momentum),
        interpret,
    )  # fmt: skip
    new_params[first] = {**new_params[first], "kernel": new_first_kernel}
    new_velocity[first] = {**new_velocity[first], "kernel": new_first_velocity}
    losses, corrects = losses.reshape(-1), corrects.reshape(-1)
    if scalars:
        losses, corrects = losses[index + row_offset], corrects[index + row_offset]
    return _bias_vectors(new_params), _bias_vectors(new_velocity), d_flat, losses, corrects


def _without_kernel(layer: dict) -> dict:
    return {kind: array for kind, array in layer.items() if kind != "kernel"}


def _first_kernel_step(
    kernel: jax.Array, velocity: jax.Array, flat: jax.Array, d_first: jax.Array,
    learning_rate_block: jax.Array, momentum: float, interpret: bool | None,
) -> tuple[jax.Array, jax.Array, jax.Array]:  # fmt: skip
    """fc1's kernel (n_in, n1) float32 after its momentum step, its velocity (same shape),
    and d loss / d flat (B, n_in) float32, from `flat` (B, n_in) float32 and `d_first` (B,
    n1) float32 = d loss / d fc1's pre-activation; one program per `_FIRST_KERNEL_ROWS` rows.

    Why a kernel of its own: fc1's kernel is 512 KiB (1024 x 128 float32), and reading it
    three times (forward, d flat, update) and its velocity once and writing both back, 3 MiB
    a step, in the head's one program would stream through one SM; here each of 32 programs
    moves its 32 rows, and the head's program reads the kernel once, for the forward pass."""
    n_in, _ = kernel.shape
    structs = (
        jax.ShapeDtypeStruct(kernel.shape, jnp.float32),
        jax.ShapeDtypeStruct(kernel.shape, jnp.float32),
        jax.ShapeDtypeStruct(flat.shape, jnp.float32),
    )
    return triton_call(
        functools.partial(_first_kernel_kernel, momentum=momentum), structs,
        (pl.cdiv(n_in, _FIRST_KERNEL_ROWS),), name="head_first_kernel_step",
        interpret=interpret, warps=_FIRST_KERNEL_WARPS,
        # Each program reads its rows of the kernel before writing them: in place is safe.
        input_output_aliases={0: 0, 1: 1},
    )(kernel, velocity, flat, d_first, learning_rate_block)


def _first_kernel_kernel(kernel_ref, velocity_ref, flat_ref, d_first_ref, learning_rate_ref,
                         new_kernel_ref, new_velocity_ref, d_flat_ref, *,
                         momentum: float) -> None:  # fmt: skip
    """One program: rows r.. r + `_FIRST_KERNEL_ROWS` of fc1's kernel (n_in, n1), r = the
    program's index times that. d flat's columns there are d_first @ those rows' transpose;
    their gradient is flat's columns' transpose @ d_first. Refs float32: kernel, velocity,
    new kernel and velocity (aliasing them) (n_in, n1); flat, d_flat (B, n_in); d_first
    (B, n1); learning rate (1, 1). Blocks are padded as `load_block` pads."""
    start = pl.program_id(0) * _FIRST_KERNEL_ROWS
    batch, n1 = d_first_ref.shape
    rows, columns = dot_size(batch), dot_size(n1)
    old_kernel = load_block(kernel_ref, (_FIRST_KERNEL_ROWS, columns), start)
    d_first = load_block(d_first_ref, (rows, columns))
    store_block(d_flat_ref, jnp.dot(d_first, old_kernel.T), 0, start)
    flat = load_block(flat_ref, (rows, _FIRST_KERNEL_ROWS), 0, start)
    momentum_update(
        (kernel_ref, velocity_ref, new_kernel_ref, new_velocity_ref), jnp.dot(flat.T, d_first),
        learning_rate_ref[...], momentum, start, param=old_kernel,
    )  # fmt: skip


def _check_layers(layers: dict, what: str) -> dict[str, tuple[int, int]]:
    """{name: (n_in, n_out)} of a head's layers; ValueError unless they are fc1..fc5 with
    float32 (n_in, n_out) kernels and (n_out,) biases, each layer's n_in the previous n_out."""
    if sorted(layers) != list(LAYER_NAMES):
        raise ValueError(f"{what} must have the layers {LAYER_NAMES}; got {sorted(layers)}")
    shapes = {}
    for name in LAYER_NAMES:
        kernel, bias = layers[name]["kernel"], layers[name]["bias"]
        if kernel.ndim != 2 or bias.shape != kernel.shape[1:]:
            raise ValueError(
                f"{what}[{name!r}] must be a (n_in, n_out) kernel and a (n_out,) bias; "
                f"got {kernel.shape} and {bias.shape}"
            )
        if kernel.dtype != jnp.float32 or bias.dtype != jnp.float32:
            raise ValueError(
                f"{what}[{name!r}] must be float32; got {kernel.dtype} and {bias.dtype}"
            )
        shapes[name] = kernel.shape
    for previous, name in zip(LAYER_NAMES, LAYER_NAMES[1:]):
        if shapes[name][0] != shapes[previous][1]:
            raise ValueError(
                f"{what}[{name!r}] must take the {shapes[previous][1]} outputs of {previous}; "
                f"its kernel is {shapes[name]}"
            )
    return shapes


def _check_batch(flat: jax.Array, labels: jax.Array, layer_shapes: dict) -> int:
    """The batch size B; ValueError unless `flat` is (B, n_in of fc1) float and `labels` (B,)
    integers with B >= 1."""
    first_shape = layer_shapes[LAYER_NAMES[0]]
    if flat.ndim != 2 or flat.shape[1] != first_shape[0] or flat.shape[0] < 1:
        raise ValueError(
            f"flat must be (batch, {first_shape[0]}) to feed {LAYER_NAMES[0]}'s "
            f"{first_shape} kernel; got {flat.shape}"
        )
    if not jnp.issubdtype(flat.dtype, jnp.floating):
        raise ValueError(f"flat must be floating point; got {flat.dtype}")
    if labels.shape != flat.shape[:1] or not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(
            f"labels must be ({flat.shape[0]},) integers, one per row of flat; "
            f"got {labels.shape} {labels.dtype}"
        )
    return flat.shape[0]


def _bias_rows(layers: dict) -> dict:
    """{name: {"kernel": (n_in, n_out), "bias": (n_out,)}} with each bias as a (1, n_out) row."""
    return {name: {**layer, "bias": layer["bias"][None, :]} for name, layer in layers.items()}


def _bias_vectors(layers: dict) -> dict:
    """The inverse of `_bias_rows`."""
    return {name: {**layer, "bias": layer["bias"][0]} for name, layer in layers.items()}


def _train_step_kernel(
    params,
    velocity,
    _losses_ref,
    _corrects_ref,
    first_kernel_ref,
    flat_ref,
    labels_ref,
    order_ref,
    index_ref,
    learning_rate_ref,
    new_params,
    new_velocity,
    d_first_ref,
    losses_ref,
    corrects_ref,
    *,
    batch: int,
    num_classes: int,
    momentum: float,
    row_offset: int,
) -> None:
    """The Pallas kernel; refs are float32 unless said, B = `batch`.

    params, velocity, new_params, new_velocity: {name: {"kernel": (n_in, n_out), "bias":
    (1, n_out)}}, the new ones aliasing the old, except fc1's kernel, which is only read:
    first_kernel_ref (n_in, n1); flat_ref (B, n_in); labels_ref (N, 1) int32, of which the
    batch's are rows order_ref[index_ref[0] + row_offset] ((S, B) int32 and (1,) int32);
    learning_rate_ref
    (1, 1); d_first_ref (B, n1), d loss / d fc1's pre-activation; losses_ref (S, 1) and
    corrects_ref (S, 1) int32, aliasing the inputs _losses_ref and _corrects_ref, written at
    that row only. Values are computed in blocks padded with zeros to `dot_size`s
    (`load_block`): P = dot_size(B) rows, of which rows >= B are padding, as are logit
    columns >= `num_classes`. With the outputs aliasing the inputs, every layer's old kernel
    is read before it is written.
    """
    first, *deeper = LAYER_NAMES
    # (param, velocity, new param, new velocity) refs of each array, in params' structure.
    update_refs = jax.tree.map(lambda *refs: refs, params, velocity, new_params, new_velocity)
    learning_rate = learning_rate_ref[...]
    # fc1's input rows in tiles, over its padded size (784 inputs of 28x28 images read as 1024).
    inputs = dot_size(flat_ref.shape[1])
    input_tiles = [
        slice(start, start + min(_INPUT_TILE_ROWS, inputs))
        for start in range(0, inputs, _INPUT_TILE_ROWS)
    ]

    rows = dot_size(batch)

    def flat_tile(tile: slice) -> jax.Array:
        return load_block(flat_ref, (rows, tile.stop - tile.start), 0, tile.start)

    def kernel_block(name: str, tile: slice | None = None) -> jax.Array:
        ref = first_kernel_ref if name == first else params[name]["kernel"]
        if tile is None:
            return load_block(ref, (dot_size(ref.shape[0]), dot_size(ref.shape[1])))
        return load_block(ref, (tile.stop - tile.start, dot_size(ref.shape[1])), tile.start)

    def bias_block(name: str) -> jax.Array:
        ref = params[name]["bias"]
        return load_block(ref, (1, dot_size(ref.shape[1])))

    pre_activation = bias_block(first)
    for tile in input_tiles:
        pre_activation = pre_activation + jnp.dot(flat_tile(tile), kernel_block(first, tile))
    layer_inputs = {}
    for name in deeper:
        layer_inputs[name] = jnp.maximum(pre_activation, 0.0)
        pre_activation = jnp.dot(layer_inputs[name], kernel_block(name)) + bias_block(name)
    column = lax.broadcasted_iota(jnp.int32, pre_activation.shape, 1)
    logits = jnp.where(column < num_classes, pre_activation, _MASKED_LOGIT)
    step = step_row(index_ref, row_offset)
    labels = _batch_labels(labels_ref, order_ref, step, rows)
    d_pre_activation, loss, correct = _softmax_cross_entropy(logits, labels, batch)
    first_column = jnp.zeros((1, 1), jnp.int32)
    pltriton.store(losses_ref.at[step[:, None], first_column], loss)
    pltriton.store(corrects_ref.at[step[:, None], first_column], correct)

    for name in reversed(deeper):
        layer_input = layer_inputs[name]
        d_layer_input = jnp.dot(d_pre_activation, kernel_block(name).T)
        grad_kernel = jnp.dot(layer_input.T, d_pre_activation)
        grad_bias = jnp.sum(d_pre_activation, axis=0, keepdims=True)
        momentum_update(update_refs[name]["kernel"], grad_kernel, learning_rate, momentum)
        momentum_update(update_refs[name]["bias"], grad_bias, learning_rate, momentum)
        # ReLU's gradient, 0 at 0 as jax.nn.relu's.
        d_pre_activation = jnp.where(layer_input > 0.0, d_layer_input, 0.0)
    # fc1's kernel gradient and d loss / d flat are `_first_kernel_kernel`'s, from this.
    store_block(d_first_ref, d_pre_activation)
    grad_bias = jnp.sum(d_pre_activation, axis=0, keepdims=True)
    momentum_update(update_refs[first]["bias"], grad_bias, learning_rate, momentum)


def _batch_labels(labels_ref, order_ref, step: jax.Array, rows: int) -> jax.Array:
    """The batch's labels as a (rows, 1) int32 column padded with 0: labels_ref[order_ref[
    step, b]] for b < B (order_ref (S, B), `step` (1,) int32), read through index arrays."""
    batch = order_ref.shape[1]
    row = lax.broadcasted_iota(jnp.int32, (rows, 1), 0)
    first_column = jnp.zeros((1, 1), jnp.int32)
    examples = pltriton.load(
        order_ref.at[step[:, None], jnp.minimum(row, batch - 1)], mask=row < batch,
        other=0,
    )  # fmt: skip
    return pltriton.load(labels_ref.at[examples, first_column], mask=row < batch, other=0)


def batch_head_train_step(
    head_params: dict, head_velocity: dict, flat: jax.Array, batch: StepBatch,
    learning_rate: jax.Array, momentum: float, records: Records, *,
    interpret: bool | None = None,
) -> tuple[dict, dict, jax.Array, Records]:  # fmt: skip
    """`head_train_step` on `batch`'s labels, which the kernel reads from the whole label set,
    writing the step's loss and correct count into `records` at the batch's index:
    `fused.step`'s head step (`step.xla_head_train_step` in two kernels)."""
    params, velocity, d_flat, losses, corrects = head_train_step(
        head_params, head_velocity, flat, batch.labels, learning_rate, momentum,
        label_rows=(batch.order, batch.index), row_offset=batch.offset, records=records,
        interpret=interpret,
    )  # fmt: skip
    return params, velocity, d_flat, (losses, corrects)


def _softmax_cross_entropy(
    logits: jax.Array, labels: jax.Array, batch: int
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(dLoss/dlogits (P, C), loss (1, 1), correct (1, 1) int32) for logits (P, C) and
    labels (P, 1) int32, where loss is the mean cross-entropy over the first `batch` rows;
    the other rows are padding and contribute nothing."""
    real_row = lax.broadcasted_iota(jnp.int32, labels.shape, 0) < batch
    one_hot = lax.broadcasted_iota(jnp.int32, logits.shape, 1) == labels
    shifted = logits - jnp.max(logits, axis=1, keepdims=True)
    exp_shifted = jnp.exp(shifted)
    sum_exp = jnp.sum(exp_shifted, axis=1, keepdims=True)
    label_logit = jnp.sum(jnp.where(one_hot, shifted, 0.0), axis=1, keepdims=True)
    row_loss = jnp.where(real_row, jnp.log(sum_exp) - label_logit, 0.0)
    loss = jnp.sum(row_loss, axis=0, keepdims=True) / batch
    d_logits = jnp.where(real_row, exp_shifted / sum_exp - jnp.where(one_hot, 1.0, 0.0), 0.0)
    right = real_row & (jnp.argmax(logits, axis=1, keepdims=True) == labels)
    correct = jnp.sum(jnp.where(right, 1, 0), axis=0, keepdims=True)
    return d_logits / batch, loss, correct
