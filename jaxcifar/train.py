"""The training loop as a library: state, jitted steps, evaluation and `fit` (how an epoch's
steps run, on the host or in compiled scans: `jaxcifar.epochs`).

Everything random derives from `config.seed`: the parameter init key, and per epoch a
permutation key and a dropout/augmentation key (`epochs.epoch_keys`), made with
`jax.random.fold_in(key, epoch)` and then `fold_in(step_key, step)`. So an epoch's work
depends only on (seed, epoch, state at its start), and resuming at an epoch boundary
reproduces an uninterrupted run bit for bit.

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
from typing import TYPE_CHECKING, Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from jaxcifar import compiling, epochs, models, parallel, peers
from jaxcifar.augment import random_crop_flip
from jaxcifar.config import RunConfig
from jaxcifar.data.dataset import Dataset
from jaxcifar.data.preprocess import to_float
from jaxcifar.errors import ConfigError, DataError, TrainingDiverged
from jaxcifar.models import checks
from jaxcifar.optim import build_optimizer

if TYPE_CHECKING:
    from jaxcifar import checkpoint

# The fused path's modes (jaxcifar.fused.epoch.PALLAS_PARTS says what each runs in Pallas).
FUSED_MODES = ("fused", "fused-pallas", "fused-pallas-all")
EPOCH_MODES = ("auto", "loop", "chunk", "scan", *FUSED_MODES)
# Evaluation batch: the seed CNN's evaluation on the 2-core AVX2 CPU, per image, 91 us at 250
# against 111 at 100, 149 at 500 and 155 at 1,000 (benchmarks/README.md, finding 9); on a
# GPU the test set is a few dozen small calls either way.
EVAL_BATCH = 250

Batch = tuple[jax.Array, jax.Array]


class TrainState(NamedTuple):
    """What one training step updates: parameters, optimizer state, global step (int32 scalar)."""

    params: Any
    opt_state: Any
    step: jax.Array


class Setup(NamedTuple):
    """The model and optimizer of a run."""

    model: models.Model
    optimizer: optax.GradientTransformation


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
    steps = epochs.steps_per_epoch(config.batch_size, train_set)
    model = build_model(config, train_set.images.shape[1:], train_set.num_classes)
    return Setup(model, build_optimizer(config, steps))


def init_state(config: RunConfig, setup: Setup, mesh: Mesh | None = None) -> TrainState:
    """Fresh parameters from `config.seed` and a zeroed optimizer state, at step 0,
    replicated over `mesh` (default: every device)."""
    mesh = parallel.data_mesh() if mesh is None else mesh

    def new_state(seed: jax.Array) -> TrainState:
        return _new_state(setup, init_key(seed))

    # Made inside jit straight onto the mesh: every process computes the same state, and
    # no process could place an array it made eagerly onto another process's devices.
    replicated = parallel.replicated_sharding(mesh)
    return jax.jit(new_state, out_shardings=replicated)(np.int32(config.seed))


def state_template(config: RunConfig, input_shape: Sequence[int], num_classes: int) -> TrainState:
    """The shapes and dtypes of a run's TrainState (ShapeDtypeStructs; nothing is computed),
    the target structure for restoring a checkpoint."""
    # The optimizer state's structure does not depend on the schedule's length.
    setup = Setup(build_model(config, input_shape, num_classes), build_optimizer(config, 1))
    return jax.eval_shape(functools.partial(_new_state, setup), init_key(config.seed))


def restore_model(saved: checkpoint.Checkpoint) -> tuple[models.Model, Any]:
    """(the model a checkpoint's run trained, its trained parameters as jax arrays);
    CheckpointError when the checkpoint's state does not fit its own configuration."""
    # Here, not at the top: flax's serialization imports Pallas, which the training paths
    # other than the fused Pallas ones never import (tests/test_fused.py).
    from jaxcifar import checkpoint

    num_classes = len(saved.class_names)
    template = state_template(saved.config, saved.input_shape, num_classes)
    params = checkpoint.restore(saved, template).params
    return build_model(saved.config, saved.input_shape, num_classes), params


def _new_state(setup: Setup, key: jax.Array) -> TrainState:
    params = setup.model.init(key)
    return TrainState(params, setup.optimizer.init(params), jnp.zeros((), jnp.int32))


def init_key(seed: int | jax.Array) -> jax.Array:
    """The parameter init key: fold_in 0 of the seed's key (the data keys fold in 1)."""
    return jax.random.fold_in(jax.random.key(seed), 0)


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-example softmax cross-entropy, (N, K) float32 logits and (N,) int labels -> (N,)."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def correct_count(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """How many of (N, K) `logits` rank the (N,) int `labels` first: an int32 scalar."""
    return jnp.sum(jnp.argmax(logits, -1) == labels)


def _check_batch(images: jax.Array, labels: jax.Array, where: str) -> None:
    """Raise unless `images` are uint8 pixels (B, ...) and `labels` (B,) integer classes,
    the batch the jitted steps take. Reads shapes and dtypes only: free once traced.

    Raises:
      TypeError: float images (already through `to_float`: the step would scale them
        again, to about -1 everywhere, and train on that), integer images of another type
        (uint16 pixels would be scaled as 0..255), or non-integer labels.
      ValueError: labels not of shape (B,), e.g. (B, 1) or one-hot (B, K).
    """
    checks.check_uint8_pixels(images.dtype, where, "the step scales to [-1, 1]")
    if labels.shape != images.shape[:1]:
        raise ValueError(
            f"{where}: labels {labels.shape} for {images.shape[0]} images; expected "
            f"({images.shape[0]},) class indices (not one-hot, no trailing axis)"
        )
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise TypeError(f"{where}: labels are {labels.dtype}; expected integer class indices")


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
    global batch, so XLA all-reduces the gradients. The crops come from jax.random, whose
    threefry is partitionable (`jax_threefry_partitionable`): any device count draws the same
    (tests/test_parallel.py, test_eight_devices_train_like_one). The dropout mask comes from
    XLA's RngBitGenerator (`layers.dropout`), which that flag does not cover; its bits on one
    and on eight devices are compared in tests/test_models.py.

    Raises (when first called for a batch shape): TypeError / ValueError from `_check_batch`
    for float images or labels not (B,) integers; the model's own (`models.checks`).
    """
    compute_dtype = jnp.dtype(dtype)

    def loss_fn(params, images, labels, rng):
        logits = setup.model.apply(params, images, train=True, rng=rng, dtype=compute_dtype)
        return cross_entropy(logits, labels).mean(), logits

    def train_step(state: TrainState, batch: Batch, rng: jax.Array):
        images, labels = batch
        _check_batch(images, labels, "train step")
        if augment:
            augment_key, rng = jax.random.split(rng)
            images = random_crop_flip(augment_key, images)
        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        (loss, logits), grads = grad_fn(state.params, to_float(images), labels, rng)
        updates, opt_state = setup.optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        correct = correct_count(logits, labels)
        return TrainState(params, opt_state, state.step + 1), {"loss": loss, "correct": correct}

    mesh = parallel.data_mesh() if mesh is None else mesh
    replicated, sharded = parallel.replicated_sharding(mesh), parallel.batch_sharding(mesh)
    return jax.jit(
        train_step,
        in_shardings=(replicated, (sharded, sharded), replicated),
        out_shardings=(replicated, replicated),
    )


def make_eval_step(
    model: models.Model, *, dtype: str = "float32", mesh: Mesh | None = None
) -> Callable[[Any, Batch], tuple[jax.Array, jax.Array]]:
    """`model`'s jitted `(params, (images uint8, labels)) -> (losses (B,) float32,
    predictions (B,) int32)`, dropout off; data parallel over `mesh` like `make_train_step`,
    with both outputs replicated so every process can read them (B floats and ints: a
    negligible gather). Compiled once per batch shape by `compiling.compile_program`.
    Raises as `make_train_step`'s step does for a batch that is not uint8 images and (B,)
    integer labels."""
    compute_dtype = jnp.dtype(dtype)

    def eval_step(params, batch: Batch):
        images, labels = batch
        _check_batch(images, labels, "eval step")
        logits = model.apply(params, to_float(images), dtype=compute_dtype)
        return cross_entropy(logits, labels), jnp.argmax(logits, -1).astype(jnp.int32)

    mesh = parallel.data_mesh() if mesh is None else mesh
    replicated, sharded = parallel.replicated_sharding(mesh), parallel.batch_sharding(mesh)
    jitted = jax.jit(
        eval_step, in_shardings=(replicated, (sharded, sharded)), out_shardings=replicated
    )
    return compiling.compiled_per_shape(jitted)


class Evaluation(NamedTuple):
    """A model's results over a whole dataset (`evaluate`)."""

    loss: float  # mean cross-entropy
    accuracy: float
    predictions: np.ndarray  # (N,) int32


def evaluate(
    eval_step: Callable, params: Any, dataset: Dataset, mesh: Mesh | None = None
) -> Evaluation:
    """Mean loss, accuracy and every prediction over `dataset`, with `eval_step` made for
    `mesh` (default: every device).

    Batches hold EVAL_BATCH examples (fewer for a smaller set) rounded up to a multiple of
    the device count; the last is padded with zero images to that size, so there is one
    compiled shape, and the padding's outputs are dropped: each example counts once.
    Raises DataError on an empty `dataset`.
    """
    if not len(dataset):
        raise DataError(f"{dataset.source or 'dataset'}: the evaluation set is empty")
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
        mean_loss(losses),
        float(np.mean(predictions == dataset.labels)),
        predictions,
    )


def _pad_rows(array: np.ndarray, size: int) -> np.ndarray:
    """`array` with zero rows appended up to `size` rows."""
    padding = np.zeros((size - len(array), *array.shape[1:]), array.dtype)
    return np.concatenate([array, padding]) if len(padding) else array


def make_epoch_runner(mode: str, config: RunConfig, setup: Setup, train_set: Dataset,
                      mesh: Mesh | None = None) -> epochs.Runner:  # fmt: skip
    """The runner of `mode` (not "auto"; see `epochs.pick_epoch_mode`): an `EpochRunner` over
    `make_train_step`'s step, or for one of FUSED_MODES a `jaxcifar.fused.epoch.
    FusedRunner` (one device, seed-recipe kinds only; ConfigError otherwise). Both have
    `steps`, `compile_seconds` and `run(state, epoch, report) -> state`."""
    if mode in FUSED_MODES:
        # Imported here: the fused path builds on this module (its reference and its state).
        from jaxcifar.fused.epoch import FusedRunner

        return FusedRunner(config, train_set, path=mode, mesh=mesh)
    train_step = make_train_step(setup, dtype=config.dtype, augment=config.augment, mesh=mesh)
    return epochs.EpochRunner(train_step, train_set, config, mode, mesh)


class EpochRecord(NamedTuple):
    """One epoch's summary, as stored in metrics.json and checkpoints.

    train_loss / train_accuracy: means over the epoch's steps as each trained (dropout and
    augmentation on, the loss before the step's update); test_*: every test example after
    the epoch, test_examples of them (a resume may test on another --limit-test subset than
    the epochs before it; None in a record saved before the count was kept); seconds: its
    wall time, training and that evaluation, compiling excluded.
    """

    epoch: int
    train_loss: float
    train_accuracy: float
    test_loss: float
    test_accuracy: float
    test_examples: int | None
    seconds: float


class FitResult(NamedTuple):
    """What `fit` returns: the trained state, the epochs' records, the final evaluation."""

    state: TrainState
    history: list[dict[str, float]]
    test: Evaluation
    # Compiling (and first running) the init, the evaluation step and the epochs' programs:
    # time that no epoch's `seconds` includes.
    compile_seconds: float


def training_devices(epoch_mode: str = "auto") -> list[jax.Device]:
    """The devices `fit` trains on by default in `epoch_mode`: every device of the default
    backend, in every process; the fused modes train on one device, this process's first."""
    return jax.local_devices()[:1] if epoch_mode in FUSED_MODES else jax.devices()


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
    stop_signal: Callable[[], int | None] = lambda: None,
) -> FitResult:
    """Train `config.epochs` epochs (continuing after `history`'s epochs when resuming with
    its `state`), evaluating on `test_set` after each, and return the final state and reports.

    Runs data parallel over `mesh` (default: every device of every process); the batch size
    must divide by its device count (ConfigError otherwise). `epoch_mode` is one of
    EPOCH_MODES: "auto" picks chunk, scan or loop (`epochs.pick_epoch_mode`); FUSED_MODES
    train along the fast path of `jaxcifar.fused`, on one device (by default
    this process's first) in a one-process run. `on_epoch_end(state, history)` runs after
    each epoch (checkpointing), on process 0 only: the state is replicated, so
    process 0 holds all of it. A non-finite loss raises TrainingDiverged naming the epoch
    and step (or the epoch, for the test loss), before that epoch's `on_epoch_end`.

    In a multi-process run the processes meet after each group of steps a runner reports
    and after each epoch's `on_epoch_end` (`peers.go_on`): there a signal that
    `stop_signal()` returns (one held back, `StopOnSignal.defer`) stops every process
    together, raising Interrupted, as does another process's failure, so that no process
    waits in a collective for one that stopped (but for one that a second signal stops at
    once, `StopOnSignal.defer`).

    Raises DataError when `test_set`'s image shape or class names differ from `train_set`'s
    (the model is built for the training set: other images fail deep in the model, more
    classes score as NaN losses, a mixed-up dataset as chance accuracy).
    """
    if epoch_mode not in EPOCH_MODES:
        raise ConfigError(
            f"--epoch-mode must be one of {', '.join(EPOCH_MODES)}; got {epoch_mode!r}"
        )
    _check_same_kind(train_set, test_set)
    mesh = parallel.data_mesh(training_devices(epoch_mode)) if mesh is None else mesh
    setup = build_setup(config, train_set)
    mode = epochs.pick_epoch_mode(epoch_mode, train_set)
    runner = make_epoch_runner(mode, config, setup, train_set, mesh)
    # The init and the evaluation step compile here, timed with the epochs' programs: left to
    # the first `evaluate`, the evaluation's compile went unseen into epoch 1's seconds. It
    # compiles on its first call (`compiled_per_shape`), so it evaluates one test batch.
    warm_up_start = time.perf_counter()
    state = init_state(config, setup, mesh) if state is None else parallel.replicate(state, mesh)
    eval_step = make_eval_step(setup.model, dtype=config.dtype, mesh=mesh)
    evaluate(eval_step, state.params, test_set.subset(EVAL_BATCH), mesh)
    warm_up_seconds = time.perf_counter() - warm_up_start
    history = list(history)
    log(f"epoch mode: {mode}, {runner.steps} step{'s' * (runner.steps != 1)} of "
        f"{config.batch_size} per epoch")
    test = None
    for epoch in range(len(history) + 1, config.epochs + 1):
        tally = _EpochTally(runner, config, epoch, progress, stop_signal)
        state = runner.run(state, epoch, tally.report)
        tally.bar.close()
        test = evaluate(eval_step, state.params, test_set, mesh)
        # The training losses come from before each step, so the epoch's last steps can
        # overflow the weights unseen by them: the test loss is the first to see it.
        if not np.isfinite(test.loss):
            raise TrainingDiverged(
                f"test loss became {test.loss} after epoch {epoch}, its training losses finite; "
                f"lower --lr (now {config.lr})"
            )
        record = EpochRecord(
            epoch=epoch,
            train_loss=tally.loss(),
            train_accuracy=tally.accuracy(),
            test_loss=test.loss,
            test_accuracy=test.accuracy,
            test_examples=len(test_set),
            seconds=tally.seconds(),
        )
        history.append(record._asdict())
        log(
            f"epoch {epoch}/{config.epochs}: train loss {record.train_loss:.4f} "
            f"acc {record.train_accuracy:.4f} | test loss {record.test_loss:.4f} "
            f"acc {record.test_accuracy:.4f} | {record.seconds:.1f}s"
        )
        if on_epoch_end is not None and parallel.is_main_process():
            on_epoch_end(state, history)
        # Until process 0 has saved the epoch, the others must not start the next one: were
        # the save to fail, they would wait for it in the next step's collectives.
        peers.go_on(f"the end of epoch {epoch}", stop_signal())
    if test is None:  # resumed with every epoch already done
        test = evaluate(eval_step, state.params, test_set, mesh)
    return FitResult(state, history, test, warm_up_seconds + runner.compile_seconds)


class _EpochTally:
    """One epoch's running training figures, fed by the runner's `report` calls, which also
    stop the epoch on a non-finite loss and drive its progress bar."""

    def __init__(
        self, runner: epochs.Runner, config: RunConfig, epoch: int, progress: bool,
        stop_signal: Callable[[], int | None],
    ):  # fmt: skip
        self.runner, self.config, self.epoch = runner, config, epoch
        self.stop_signal = stop_signal
        self.start, self.compile_before = time.perf_counter(), runner.compile_seconds
        # The per-step losses as reported, reduced once (`mean_loss`): each mode reports its
        # own grouping of steps, which must not change the recorded mean.
        self.losses: list[np.ndarray] = []
        self.correct = 0
        self.bar = _progress_bar(runner.steps, epoch, config.epochs, enabled=progress)

    def report(self, first: int, losses: np.ndarray, corrects: np.ndarray) -> None:
        """Steps first.. first + len(losses) - 1 (0-based) of the epoch ended with these
        losses and counts of correct predictions; raises TrainingDiverged on a non-finite loss,
        and Interrupted when a process of a multi-process run stops (`peers.go_on`)."""
        bad = np.flatnonzero(~np.isfinite(losses))
        if bad.size:
            self.bar.close()
            raise TrainingDiverged(
                f"loss became {losses[bad[0]]} at epoch {self.epoch} step {first + bad[0] + 1}; "
                f"lower --lr (now {self.config.lr})"
            )
        self.losses.append(losses)
        self.correct += int(corrects.sum())
        seen = self.examples()
        self.bar.set_postfix(
            loss=f"{self.loss():.4f}",
            acc=f"{self.correct / seen:.4f}",
            img_s=f"{seen / max(self.seconds(), 1e-9):.0f}",
        )
        self.bar.update(len(losses))
        peers.go_on(f"epoch {self.epoch} step {first + len(losses)}", self.stop_signal())

    def examples(self) -> int:
        """Training examples seen so far this epoch."""
        return sum(map(len, self.losses)) * self.config.batch_size

    def loss(self) -> float:
        """The mean training loss so far."""
        return mean_loss(self.losses)

    def accuracy(self) -> float:
        """The training accuracy so far (dropout and augmentation on)."""
        return self.correct / self.examples()

    def seconds(self) -> float:
        """Seconds since the epoch began, compiling excluded."""
        compiling = self.runner.compile_seconds - self.compile_before
        return time.perf_counter() - self.start - compiling


def mean_loss(losses: Sequence[np.ndarray]) -> float:
    """The mean of per-step losses given as float32 arrays (steps,) in step order, grouped
    any way: joined, then summed once in float64. Summing each group in float32 first made
    the record depend on the grouping, which differs by epoch mode (100 steps per report in
    chunk and loop, a whole epoch in scan and fused): 2.3117261352539065 against
    2.31172607421875 for bit-identical steps. ~15 us for a 12,500-step epoch on the 2-core CPU."""
    return float(np.concatenate(losses).sum(dtype=np.float64) / sum(map(len, losses)))


def _check_same_kind(train_set: Dataset, test_set: Dataset) -> None:
    """Raise DataError unless both sets hold images of one shape and the same classes."""
    mismatch = test_set.mismatch(train_set.images.shape[1:], train_set.class_names)
    if mismatch is not None:
        what, found, expected = mismatch
        test_name, train_name = (
            name + (f" ({dataset.source})" if dataset.source else "")
            for name, dataset in (("test_set", test_set), ("train_set", train_set))
        )
        raise DataError(
            f"{test_name} has {what} {found}, but {train_name} {expected}: another dataset? "
            "(the model is built for the training set)"
        )


def _progress_bar(total: int, epoch: int, epoch_count: int, *, enabled: bool):
    from tqdm import tqdm

    return tqdm(
        total=total, desc=f"epoch {epoch}/{epoch_count}", unit="step", leave=False,
        disable=not enabled or not sys.stderr.isatty(), file=sys.stderr,
    )  # fmt: skip
