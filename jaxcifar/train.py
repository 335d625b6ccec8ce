"""The training loop as a library: state, jitted steps, epochs and `fit`.

Everything random derives from `config.seed`: the parameter init key, and per epoch a
permutation key and a dropout/augmentation key, made with `jax.random.fold_in(key, epoch)`
and then `fold_in(step_key, step)`. So an epoch's work depends only on (seed, epoch, state at
its start), and resuming at an epoch boundary reproduces an uninterrupted run bit for bit.

The last partial batch of an epoch is dropped (steps = N // batch_size), unlike PyTorch's
DataLoader default: every step then has one shape and one compiled program, and the seed
recipe (50,000 / 4) has no partial batch anyway. Evaluation covers every test example.

Every step runs data parallel over a mesh of devices (`jaxcifar.parallel`; default: all of
them, in every process): the batch is sharded, state and keys replicated, and the compiler
averages the gradients. A mesh of one device is the same code.
"""

from __future__ import annotations

import functools
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from jaxcifar import cpu_fusions, models, parallel
from jaxcifar.augment import random_crop_flip
from jaxcifar.bench.xla_cost import compile_timed
from jaxcifar.config import RunConfig
from jaxcifar.data.dataset import Dataset
from jaxcifar.data.preprocess import to_float
from jaxcifar.errors import ConfigError, TrainingDiverged
from jaxcifar.optim import build_optimizer

EPOCH_MODES = ("auto", "loop", "chunk", "scan", "fused", "fused-pallas")
# The fused path's modes and the head step each runs (jaxcifar.fused).
FUSED_HEADS = {"fused": "xla", "fused-pallas": "pallas"}
CHUNK_STEPS = 100
# Loop mode fetches losses from the device every this many steps (to update the progress bar
# and catch a NaN) rather than every step, so dispatch of later steps overlaps compute; and
# it ships the batches of as many steps to the device in one transfer (see `_run_loop`).
SYNC_EVERY = 100
# Loop mode runs this many consecutive steps per jitted call, unrolled (no while loop, which
# XLA:CPU runs slowly): seed recipe on the 2-core CPU, 6 x 1,000 steps each, 2.71 vs 3.02 ms
# per step (median), for one more compile (5.0 vs 2.2 s, once per machine with the cache).
# Dispatch alone is ~0.1 ms a call; the rest is XLA overlapping one step's tail (the dense
# layers' updates) with the next step's start. An epoch's leftover steps run one per call.
LOOP_UNROLL = 4
# Epochs shorter than this run one step per call: the 4-step program's extra compile (~3 s
# cold) would cost more than its ~0.3 ms per step saves over a 10-epoch run.
LOOP_UNROLL_MIN_STEPS = 1_000
# Evaluation batch: the seed CNN's evaluation on the 2-core CPU, per image, 91 us at 250
# against 111 at 100, 149 at 500 and 237 at 1,000 (whose program, over 64 MiB, also compiles
# without library fusions: `cpu_fusions`); on a GPU the test set is a few dozen small calls
# either way.
EVAL_BATCH = 250

Batch = tuple[jax.Array, jax.Array]


class TrainState(NamedTuple):
    """What one training step updates: parameters, optimizer state, global step (int32 scalar)."""

    params: Any
    opt_state: Any
    step: jax.Array


class Setup(NamedTuple):
    """The model and optimizer of a run, and the steps in one of its epochs."""

    model: models.Model
    optimizer: optax.GradientTransformation
    steps_per_epoch: int


def build_model(config: RunConfig, input_shape: Sequence[int], num_classes: int) -> models.Model:
    """`config.model` for (H, W, C) images and `num_classes` classes."""
    return models.build(
        config.model, tuple(input_shape), num_classes,
        mlp_hidden=config.mlp_hidden, mlp_activation=config.mlp_activation,
    )  # fmt: skip


def build_setup(config: RunConfig, train_set: Dataset) -> Setup:
    """The model for `train_set`'s image shape and classes, and the optimizer for `config`.

    Raises ConfigError when the batch size exceeds the training set.
    """
    if config.batch_size > len(train_set):
        raise ConfigError(
            f"--batch-size {config.batch_size} is larger than the training set "
            f"({len(train_set)} examples)"
        )
    model = build_model(config, train_set.images.shape[1:], train_set.num_classes)
    steps = len(train_set) // config.batch_size
    return Setup(model, build_optimizer(config, steps), steps)


def init_state(config: RunConfig, setup: Setup, mesh: Mesh | None = None) -> TrainState:
    """Fresh parameters from `config.seed` and a zeroed optimizer state, at step 0,
    replicated over `mesh` (default: every device)."""
    mesh = parallel.data_mesh() if mesh is None else mesh

    def new_state(seed: jax.Array) -> TrainState:
        return _new_state(setup, init_key(seed))

    # Made inside jit straight onto the mesh: every process computes the same state, and
    # no process could place an array it made eagerly onto another process's devices.
    return jax.jit(new_state, out_shardings=parallel.replicated(mesh))(np.int32(config.seed))


def state_template(config: RunConfig, input_shape: Sequence[int], num_classes: int) -> TrainState:
    """The shapes and dtypes of a run's TrainState (ShapeDtypeStructs; nothing is computed),
    the target structure for restoring a checkpoint."""
    # The optimizer state's structure does not depend on the schedule's length.
    setup = Setup(build_model(config, input_shape, num_classes), build_optimizer(config, 1), 1)
    return jax.eval_shape(functools.partial(_new_state, setup), init_key(config.seed))


def _new_state(setup: Setup, key: jax.Array) -> TrainState:
    params = setup.model.init(key)
    return TrainState(params, setup.optimizer.init(params), jnp.zeros((), jnp.int32))


def init_key(seed: int | jax.Array) -> jax.Array:
    return jax.random.fold_in(jax.random.key(seed), 0)


def epoch_keys(seed: int | jax.Array, epoch: int | jax.Array) -> tuple[jax.Array, jax.Array]:
    """(permutation key, per-step key) of `epoch` (1-based): a function of seed and epoch only."""
    data_key = jax.random.fold_in(jax.random.key(seed), 1)
    return tuple(jax.random.split(jax.random.fold_in(data_key, epoch)))


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-example softmax cross-entropy, (N, K) float32 logits and (N,) int labels -> (N,)."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def make_train_step(
    setup: Setup, *, dtype: str = "float32", augment: bool = False, mesh: Mesh | None = None,
) -> Callable[[TrainState, Batch, jax.Array], tuple[TrainState, dict[str, jax.Array]]]:  # fmt: skip
    """The jitted pure step `(state, (images, labels), rng) -> (state, {"loss", "correct"})`.

    images are (B, H, W, C) uint8, normalised to [-1, 1] on the device so the host ships
    bytes; labels (B,) int32. `rng` drives augmentation (if on) and dropout. "loss" is the
    batch's mean cross-entropy before the update (float32), "correct" its count of right
    predictions. With `dtype="bfloat16"` the model computes in bfloat16 while parameters,
    gradients, optimizer state and loss stay float32.

    Data parallel over `mesh` (default: every device): the batch is split along it (B must
    divide by its size), state, rng and outputs are replicated. The loss is a mean over the
    global batch, so XLA all-reduces the gradients; random draws are partitionable
    (`jax_threefry_partitionable`), so any device count draws the same masks and crops.
    """
    compute_dtype = jnp.dtype(dtype)

    def loss_fn(params, images, labels, rng):
        logits = setup.model.apply(params, images, train=True, rng=rng, dtype=compute_dtype)
        return cross_entropy(logits, labels).mean(), logits

    def train_step(state: TrainState, batch: Batch, rng: jax.Array):
        images, labels = batch
        if augment:
            augment_key, rng = jax.random.split(rng)
            images = random_crop_flip(augment_key, images)
        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        (loss, logits), grads = grad_fn(state.params, to_float(images), labels, rng)
        updates, opt_state = setup.optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        correct = jnp.sum(jnp.argmax(logits, -1) == labels)
        return TrainState(params, opt_state, state.step + 1), {"loss": loss, "correct": correct}

    mesh = parallel.data_mesh() if mesh is None else mesh
    replicated, sharded = parallel.replicated(mesh), parallel.batch_sharding(mesh)
    return jax.jit(
        train_step,
        in_shardings=(replicated, (sharded, sharded), replicated),
        out_shardings=(replicated, replicated),
    )


def make_eval_step(
    setup: Setup, *, dtype: str = "float32", mesh: Mesh | None = None
) -> Callable[[Any, Batch], tuple[jax.Array, jax.Array]]:
    """The jitted `(params, (images uint8, labels)) -> (losses (B,) float32, predictions (B,)
    int32)`, dropout off; data parallel over `mesh` like `make_train_step`, with both outputs
    replicated so every process can read them (B floats and ints: a negligible gather).
    Compiled once per batch shape by `cpu_fusions.compile_for_size`."""
    compute_dtype = jnp.dtype(dtype)

    def eval_step(params, batch: Batch):
        images, labels = batch
        logits = setup.model.apply(params, to_float(images), dtype=compute_dtype)
        return cross_entropy(logits, labels), jnp.argmax(logits, -1).astype(jnp.int32)

    mesh = parallel.data_mesh() if mesh is None else mesh
    replicated, sharded = parallel.replicated(mesh), parallel.batch_sharding(mesh)
    jitted = jax.jit(
        eval_step, in_shardings=(replicated, (sharded, sharded)), out_shardings=replicated
    )
    return cpu_fusions.compiled_per_shape(jitted)


class Evaluation(NamedTuple):
    loss: float
    accuracy: float
    predictions: np.ndarray  # (N,) int32


def evaluate(eval_step: Callable, params: Any, dataset: Dataset, mesh: Mesh | None = None) -> Evaluation:
    """Mean loss, accuracy and every prediction over `dataset`, with `eval_step` made for
    `mesh` (default: every device).

    Batches hold EVAL_BATCH examples (fewer for a smaller set) rounded up to a multiple of
    the device count; the last is padded with zero images to that size, so there is one
    compiled shape, and the padding's outputs are dropped: each example counts once.
    """
    mesh = parallel.data_mesh() if mesh is None else mesh
    size = -(-min(EVAL_BATCH, len(dataset)) // mesh.size) * mesh.size
    rows = parallel.process_rows(mesh, size)
    losses, predictions = [], []
    for start in range(0, len(dataset), size):
        count = min(size, len(dataset) - start)
        local = tuple(
            _pad_rows(array[start : start + count], size)[rows]
            for array in (dataset.images, dataset.labels)
        )
        loss, predicted = jax.device_get(eval_step(params, parallel.shard_batch(local, mesh, size)))
        losses.append(loss[:count])
        predictions.append(predicted[:count])
    predictions = np.concatenate(predictions)
    return Evaluation(
        float(np.concatenate(losses).sum(dtype=np.float64) / len(dataset)),
        float(np.mean(predictions == dataset.labels)),
        predictions,
    )


def _pad_rows(array: np.ndarray, size: int) -> np.ndarray:
    """`array` with zero rows appended up to `size` rows."""
    padding = np.zeros((size - len(array), *array.shape[1:]), array.dtype)
    return np.concatenate([array, padding]) if len(padding) else array


def pick_epoch_mode(mode: str, dataset: Dataset) -> str:
    """Resolve "auto" for the default backend: the dataset on the device, run by compiled
    scans ("chunk" on a CPU, "scan" elsewhere), unless its uint8 images fill more than a
    quarter of the device memory, where "loop" streams batches from host memory.

    Scans spare every step its dispatch: on an H100, ~136 us/step against ~2 ms for the loop
    (`../shared/MEASURED.md`); on the 2-core CPU (seed recipe, 2 epochs of 4,000 images,
    `benchmarks/seed_recipe.py`) 1.84 ms/step against 2.59 for the loop's 4 steps per call,
    compiled in 2.2 s against 5.9 (the loop won on CPUs until the model's convolution
    gradients took XLA:CPU's library form inside loops: `layers.conv`, benchmarks/README.md,
    finding 8). A CPU gets scans of CHUNK_STEPS steps rather than whole epochs: as fast (a
    50,000-image seed-recipe epoch 25.9 / 24.2 s against 26.6 / 24.3, alternated), and its
    progress bar and Ctrl-C act every 100 steps instead of once per epoch. At batch 16 (the
    fast recipe, 24,000 images) 5.3 against 5.7 ms/step; the loop won there, 6.7 against 7.4,
    until convolutions left YNNPACK (`cpu_fusions`, benchmarks/README.md, finding 9).
    """
    if mode != "auto":
        return mode
    device = jax.devices()[0]
    limit = (device.memory_stats() or {}).get("bytes_limit")
    if limit is not None and dataset.images.nbytes > limit // 4:
        return "loop"
    return "chunk" if device.platform == "cpu" else "scan"


class EpochRunner:
    """Runs training epochs over one dataset in a given mode, timing compiles separately.

    loop: a Python loop of jitted calls of LOOP_UNROLL `train_step`s each (one in epochs of
      under LOOP_UNROLL_MIN_STEPS), fed from host memory (streaming): the batches of up to
      SYNC_EVERY steps go to the device at a time, each process shipping only its own rows
      of every batch.
    chunk: the dataset on the device, CHUNK_STEPS steps per jitted `lax.scan`.
    scan: the dataset on the device, one jitted `lax.scan` per epoch.

    `train_step` must be made for the same `mesh` (default: every device); in chunk and
    scan modes every device holds the whole dataset and gathers its own rows of each batch.
    Raises ConfigError when the batch size does not divide by the mesh's device count.
    """

    def __init__(
        self, train_step: Callable, dataset: Dataset, config: RunConfig, mode: str,
        mesh: Mesh | None = None,
    ):  # fmt: skip
        self.mesh = parallel.data_mesh() if mesh is None else mesh
        parallel.check_batch_size(config.batch_size, self.mesh.size)
        self.train_step = train_step
        self.dataset = dataset
        self.config = config
        self.mode = mode
        self.steps = len(dataset) // config.batch_size
        self._compiled: dict[int | tuple[str, int], Callable] = {}
        self.compile_seconds = 0.0
        # Compiled now and timed with the steps: left to its first call, it went unseen into
        # the first epoch's time (0.7 s of a 2-step loop epoch on the 2-core CPU).
        order_fn = _epoch_order_fn(self.mesh, len(dataset))
        self._epoch_order = self._timed_compile(order_fn, np.int32(0), np.int32(0))
        if mode in ("chunk", "scan"):
            self.device_images, self.device_labels = parallel.replicate(
                (dataset.images, dataset.labels), self.mesh
            )

    def _timed_compile(self, jitted: Callable, *args: Any) -> Callable:
        """`jitted` lowered and compiled for `args`, its time added to `compile_seconds`."""
        compiled = compile_timed(jitted, *args)
        self.compile_seconds += compiled.compile_seconds
        return compiled.executable

    def _chunk_fn(self, state: TrainState, perm: jax.Array, first: int, step_key: jax.Array, size: int):
        """Compile (once per chunk size, timed) and return the `size`-step scan."""
        if size not in self._compiled:
            batch_size = self.config.batch_size
            rows_sharding = parallel.batch_sharding(self.mesh)

            def run(state, images, labels, perm, first, step_key):
                def body(state, step):
                    index = jax.lax.dynamic_slice(perm, (step * batch_size,), (batch_size,))
                    # Sharded indices into the replicated dataset: each device gathers
                    # only its own rows of the batch.
                    index = jax.lax.with_sharding_constraint(index, rows_sharding)
                    batch = (images[index], labels[index])
                    state, out = self.train_step(state, batch, jax.random.fold_in(step_key, step))
                    return state, (out["loss"], out["correct"])

                return jax.lax.scan(body, state, first + jnp.arange(size))

            args = (state, self.device_images, self.device_labels, perm, first, step_key)
            self._compiled[size] = self._timed_compile(jax.jit(run, donate_argnums=0), *args)
        return self._compiled[size]

    def run(
        self, state: TrainState, epoch: int, report: Callable[[int, np.ndarray, np.ndarray], None]
    ) -> TrainState:
        """One epoch (1-based `epoch`). After each group of steps, calls
        `report(first_step, losses, corrects)` with host arrays, which may raise to stop."""
        perm, step_key = self._epoch_order(np.int32(self.config.seed), np.int32(epoch))
        if self.mode == "loop":
            return self._run_loop(state, np.asarray(perm), step_key, report)
        size = self.steps if self.mode == "scan" else min(CHUNK_STEPS, self.steps)
        for first in range(0, self.steps, size):
            n = min(size, self.steps - first)
            first_arr = np.int32(first)
            state, (losses, corrects) = self._chunk_fn(state, perm, first_arr, step_key, n)(
                state, self.device_images, self.device_labels, perm, first_arr, step_key
            )
            report(first, np.asarray(losses), np.asarray(corrects))
        return state

    def _run_loop(self, state, perm: np.ndarray, step_key, report) -> TrainState:
        batch_size = self.config.batch_size
        rows = parallel.process_rows(self.mesh, batch_size)
        block_steps = min(SYNC_EVERY, self.steps)
        per_call = LOOP_UNROLL if self.steps >= LOOP_UNROLL_MIN_STEPS else 1
        for first in range(0, self.steps, block_steps):
            count = min(block_steps, self.steps - first)
            index = perm[first * batch_size : (first + count) * batch_size]
            # The epoch's last block is padded with repeated rows to the others' shape, so
            # the steps compile once; the padding is never trained on.
            index = np.resize(index, block_steps * batch_size).reshape(block_steps, batch_size)
            local = index[:, rows]  # this process's rows of each batch
            block = parallel.shard_batch(
                (self.dataset.images[local], self.dataset.labels[local]),
                self.mesh, batch_size, batch_axis=1,
            )  # fmt: skip
            outs = []
            i = 0
            while i < count:
                unroll = per_call if count - i >= per_call else 1
                steps_fn = self._block_steps_fn(state, block, step_key, unroll)
                state, out = steps_fn(state, block, step_key, np.int32(first + i), np.int32(i))
                outs.append(out)
                i += unroll
            fetched = jax.device_get(outs)
            losses = np.concatenate([o["loss"] for o in fetched])
            report(first, losses, np.concatenate([o["correct"] for o in fetched]))
        return state

    def _block_steps_fn(
        self, state: TrainState, block: Batch, step_key: jax.Array, unroll: int
    ) -> Callable:
        """Compile (once per `unroll`, timed) and return the loop's call: `unroll` consecutive
        `train_step`s on batches i, i+1, ... of a block of batches (steps, B, ...) already on
        the device, step s with key fold_in(step_key, s); outputs stacked, (unroll,) each.

        Measured against a step fed one batch and one eager `fold_in` per Python call (seed
        CNN, batch 4, 2-core CPU): 3.5-3.9 vs 4.3-4.9 ms per step; the per-call transfer and
        key derivation cost the Python thread ~0.8 ms, taken from the cores XLA computes on.
        """
        if ("loop", unroll) not in self._compiled:

            def run(state, block, step_key, step, i):
                images, labels = block
                outs = []
                for j in range(unroll):
                    key = jax.random.fold_in(step_key, step + j)
                    state, out = self.train_step(state, (images[i + j], labels[i + j]), key)
                    outs.append(out)
                return state, jax.tree.map(lambda *values: jnp.stack(values), *outs)

            args = (state, block, step_key, np.int32(0), np.int32(0))
            jitted = jax.jit(run, donate_argnums=0)
            self._compiled["loop", unroll] = self._timed_compile(jitted, *args)
        return self._compiled["loop", unroll]


def make_epoch_runner(mode: str, config: RunConfig, setup: Setup, train_set: Dataset,
                      mesh: Mesh | None = None) -> Any:  # fmt: skip
    """The runner of `mode` (not "auto"; see `pick_epoch_mode`): an `EpochRunner` over
    `make_train_step`'s step, or for "fused" / "fused-pallas" a `jaxcifar.fused.epoch.
    FusedRunner` (one device, seed-recipe kinds only; ConfigError otherwise). Both have
    `steps`, `compile_seconds` and `run(state, epoch, report) -> state`."""
    if mode in FUSED_HEADS:
        # Imported here: the fused path builds on this module (its reference and its state).
        from jaxcifar.fused.epoch import FusedRunner

        return FusedRunner(config, train_set, head=FUSED_HEADS[mode], mesh=mesh)
    train_step = make_train_step(setup, dtype=config.dtype, augment=config.augment, mesh=mesh)
    return EpochRunner(train_step, train_set, config, mode, mesh)


@functools.cache
def _epoch_order_fn(mesh: Mesh, size: int) -> Callable[[np.int32, np.int32], tuple[jax.Array, jax.Array]]:
    """Jitted `(seed, epoch) -> (permutation of range(size), per-step key)`, replicated over
    `mesh`. Under jit so every process draws the same values straight onto the mesh; cached
    so runs in one process compile it once per (mesh, size), as the eager draw it replaced."""

    replicated = parallel.replicated(mesh)
    draw = functools.partial(epoch_order, size=size)
    return jax.jit(draw, out_shardings=(replicated, replicated))


def epoch_order(seed: jax.Array, epoch: jax.Array, size: int) -> tuple[jax.Array, jax.Array]:
    """(order in which `epoch` visits the `size` training examples: a permutation (size,)
    int32, the key from which step s's key is `fold_in(step_key, s)`)."""
    perm_key, step_key = epoch_keys(seed, epoch)
    return jax.random.permutation(perm_key, size), step_key


class EpochRecord(NamedTuple):
    """One epoch's summary, as stored in metrics.json and checkpoints."""

    epoch: int
    train_loss: float
    train_accuracy: float
    test_loss: float
    test_accuracy: float
    seconds: float


class FitResult(NamedTuple):
    state: TrainState
    history: list[dict[str, float]]
    test: Evaluation
    compile_seconds: float


def training_devices(epoch_mode: str = "auto") -> list[jax.Device]:
    """The devices `fit` trains on by default in `epoch_mode`: every device of the default
    backend, in every process; the fused modes train on one device, this process's first."""
    return jax.local_devices()[:1] if epoch_mode in FUSED_HEADS else jax.devices()


def describe_devices(epoch_mode: str = "auto") -> dict[str, Any]:
    """{"platform", "device_kind", "device_count" (all processes'), "process_count"} of the
    devices `fit` trains on by default in `epoch_mode` (`training_devices`)."""
    devices = training_devices(epoch_mode)
    return {
        "platform": devices[0].platform,
        "device_kind": devices[0].device_kind,
        "device_count": len(devices),
        "process_count": jax.process_count(),
    }


def fit(
    config: RunConfig,
    train_set: Dataset,
    test_set: Dataset,
    *,
    state: TrainState | None = None,
    history: Sequence[dict[str, float]] = (),
    epoch_mode: str = "auto",
    on_epoch_end: Callable[[TrainState, list[dict[str, float]]], None] | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
    mesh: Mesh | None = None,
) -> FitResult:
    """Train `config.epochs` epochs (continuing after `history`'s epochs when resuming with
    its `state`), evaluating on `test_set` after each, and return the final state and reports.

    Runs data parallel over `mesh` (default: every device of every process); the batch size
    must divide by its device count (ConfigError otherwise). `epoch_mode` is one of
    EPOCH_MODES: "auto" picks loop or scan (`pick_epoch_mode`); "fused" and "fused-pallas"
    train along the fast path of `jaxcifar.fused`, on one device (by default this process's
    first) in a one-process run. `on_epoch_end(state, history)`
    runs after each epoch (checkpointing), on process 0 only: the state is replicated, so
    process 0 holds all of it. A non-finite loss raises TrainingDiverged naming the epoch
    and step, before that epoch's `on_epoch_end`.
    """
    mesh = parallel.data_mesh(training_devices(epoch_mode)) if mesh is None else mesh
    setup = build_setup(config, train_set)
    state = init_state(config, setup, mesh) if state is None else parallel.replicate(state, mesh)
    history = list(history)
    mode = pick_epoch_mode(epoch_mode, train_set)
    eval_step = make_eval_step(setup, dtype=config.dtype, mesh=mesh)
    runner = make_epoch_runner(mode, config, setup, train_set, mesh)
    log(f"epoch mode: {mode}, {runner.steps} steps of {config.batch_size} per epoch")
    test = None
    for epoch in range(len(history) + 1, config.epochs + 1):
        start = time.perf_counter()
        compile_before = runner.compile_seconds
        totals = {"loss": 0.0, "correct": 0, "steps": 0}
        bar = _progress_bar(runner.steps, epoch, config.epochs, enabled=progress)

        def report(first: int, losses: np.ndarray, corrects: np.ndarray) -> None:
            bad = np.flatnonzero(~np.isfinite(losses))
            if bad.size:
                bar.close()
                raise TrainingDiverged(
                    f"loss became {losses[bad[0]]} at epoch {epoch} step {first + bad[0] + 1}; "
                    f"lower --lr (now {config.lr})"
                )
            totals["loss"] += float(losses.sum())
            totals["correct"] += int(corrects.sum())
            totals["steps"] += len(losses)
            seen = totals["steps"] * config.batch_size
            elapsed = time.perf_counter() - start - (runner.compile_seconds - compile_before)
            bar.set_postfix(
                loss=f"{totals['loss'] / totals['steps']:.4f}",
                acc=f"{totals['correct'] / seen:.4f}",
                img_s=f"{seen / max(elapsed, 1e-9):.0f}",
            )
            bar.update(len(losses))

        state = runner.run(state, epoch, report)
        bar.close()
        test = evaluate(eval_step, state.params, test_set, mesh)
        record = EpochRecord(
            epoch=epoch,
            train_loss=totals["loss"] / totals["steps"],
            train_accuracy=totals["correct"] / (totals["steps"] * config.batch_size),
            test_loss=test.loss,
            test_accuracy=test.accuracy,
            seconds=time.perf_counter() - start - (runner.compile_seconds - compile_before),
        )
        history.append(record._asdict())
        log(
            f"epoch {epoch}/{config.epochs}: train loss {record.train_loss:.4f} "
            f"acc {record.train_accuracy:.4f} | test loss {record.test_loss:.4f} "
            f"acc {record.test_accuracy:.4f} | {record.seconds:.1f}s"
        )
        if on_epoch_end is not None and parallel.is_main_process():
            on_epoch_end(state, history)
    if test is None:  # resumed with every epoch already done
        test = evaluate(eval_step, state.params, test_set, mesh)
    return FitResult(state, history, test, runner.compile_seconds)


def _progress_bar(total: int, epoch: int, epochs: int, *, enabled: bool):
    from tqdm import tqdm

    return tqdm(
        total=total, desc=f"epoch {epoch}/{epochs}", unit="step", leave=False,
        disable=not enabled or not sys.stderr.isatty(), file=sys.stderr,
    )  # fmt: skip
