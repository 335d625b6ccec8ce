"""How a training epoch's steps run on the devices: a loop of jitted calls fed from host
memory, or compiled `lax.scan`s over the dataset on the device (in chunks of steps or one per
epoch), and the order in which an epoch visits the examples.

An epoch's order and step keys are a function of (seed, epoch) only (`epoch_keys`), so every
mode trains the same way and a run resumed at an epoch boundary repeats an uninterrupted one.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from jaxcifar import parallel
from jaxcifar.compiling import compile_timed
from jaxcifar.config import RunConfig
from jaxcifar.data.dataset import Dataset
from jaxcifar.errors import ConfigError

if TYPE_CHECKING:  # for annotations only: jaxcifar.train builds on this module
    from jaxcifar.train import Batch, TrainState

# Chunk mode runs this many steps per compiled scan (see `pick_epoch_mode`).
CHUNK_STEPS = 100
# Loop mode fetches losses from the device every this many steps (to update the progress bar
# and catch a NaN) rather than every step, so dispatch of later steps overlaps compute; and
# it ships the batches of as many steps to the device in one transfer (see `_run_loop`).
SYNC_EVERY = 100
# Loop mode runs this many consecutive steps per jitted call, as a `lax.scan`, whose body is
# the step chunk and scan mode compile: seed recipe on a 2-core AVX-512 CPU, epochs of 1,000
# steps, 1.39-1.50 s against 1.65-1.75 s at one step per call. The steps were once unrolled
# in the call's program (as fast: 1.35-1.45 s), but XLA then compiled the sigmoid MLP's
# step otherwise than the scans' (its parameters 6e-8 off theirs after 1,000 steps); in a
# scan every epoch mode trains bit-identical parameters. An epoch's leftover steps run one
# per call.
LOOP_UNROLL = 4
# Epochs shorter than this run one step per call: the 4-step program's extra compile (~3 s
# cold) would cost more than its ~0.3 ms per step saves over a 10-epoch run.
LOOP_UNROLL_MIN_STEPS = 1_000
# The modes an `EpochRunner` runs ("auto" is resolved first, by `pick_epoch_mode`).
RUNNER_MODES = ("loop", "chunk", "scan")


def steps_per_epoch(batch_size: int, dataset: Dataset) -> int:
    """Full batches in one pass over `dataset` (a last partial batch is dropped); raises
    ConfigError where not one fits."""
    if batch_size > len(dataset):
        raise ConfigError(
            f"--batch-size {batch_size} is larger than the training set "
            f"({len(dataset)} examples)"
        )
    return len(dataset) // batch_size


def pick_epoch_mode(mode: str, dataset: Dataset) -> str:
    """Resolve "auto" for the default backend: the dataset on the device, run by compiled
    scans ("chunk" on a CPU, "scan" elsewhere), unless its uint8 images fill more than a
    quarter of the device memory, where "loop" streams batches from host memory.

    Scans spare every step its dispatch: on an H100, ~136 us/step against ~1.5 ms for a
    Python loop of jitted steps (19 s an epoch; 0.8 ms a step timed alone,
    `../shared/MEASURED.md`); on the 2-core CPU (seed recipe, 2 epochs of 4,000 images,
    `benchmarks/seed_recipe.py`) 1.84 ms/step against 2.59 for the loop's 4 steps per call,
    compiled in 2.2 s against 5.9 (the loop won on CPUs until the model's convolution
    gradients took XLA:CPU's library form inside loops: `layers.conv`, benchmarks/README.md,
    finding 8). A CPU gets scans of CHUNK_STEPS steps rather than whole epochs: as fast (a
    50,000-image seed-recipe epoch 25.9 / 24.2 s against 26.6 / 24.3, alternated), and its
    progress bar and Ctrl-C act every 100 steps instead of once per epoch. At batch 16 (the
    fast recipe, 24,000 images) 5.3 against 5.7 ms/step; the loop won there, 6.7 against 7.4,
    until convolutions left YNNPACK (`compiling`, benchmarks/README.md, finding 9).
    """
    if mode != "auto":
        return mode
    device = jax.local_devices()[0]  # this process's: another's memory cannot be asked
    limit = (device.memory_stats() or {}).get("bytes_limit")
    if limit is not None and dataset.images.nbytes > limit // 4:
        return "loop"
    return "chunk" if device.platform == "cpu" else "scan"


# What a runner's `run` reports after each group of steps: (first step, the group's per-step
# mean losses (n,) float32, their correct counts (n,) int32), host arrays; it may raise to stop.
Report = Callable[[int, np.ndarray, np.ndarray], None]


class Runner(Protocol):
    """What `train.fit` asks of an epoch runner: `EpochRunner`, or the fused path's
    `jaxcifar.fused.epoch.FusedRunner`."""

    steps: int  # per epoch
    compile_seconds: float  # compiling so far: outside every epoch's time

    def run(self, state: TrainState, epoch: int, report: Report) -> TrainState:
        """One epoch (1-based `epoch`), calling `report` after each group of steps."""
        ...


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
    Raises ConfigError when the batch size does not divide by the mesh's device count, or
    `mode` is not one of RUNNER_MODES.
    """

    def __init__(
        self, train_step: Callable, dataset: Dataset, config: RunConfig, mode: str,
        mesh: Mesh | None = None,
    ):  # fmt: skip
        if mode not in RUNNER_MODES:
            raise ConfigError(
                f"epoch mode must be one of {', '.join(RUNNER_MODES)} here, got {mode!r}"
            )
        self.mesh = parallel.data_mesh() if mesh is None else mesh
        parallel.check_batch_size(config.batch_size, self.mesh.size)
        self.train_step = train_step
        self.dataset = dataset
        self.config = config
        self.mode = mode
        self.steps = steps_per_epoch(config.batch_size, dataset)
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

    def _chunk_fn(
        self, state: TrainState, perm: jax.Array, first: int, step_key: jax.Array, size: int
    ) -> Callable:
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

    def run(self, state: TrainState, epoch: int, report: Report) -> TrainState:
        """One epoch (1-based `epoch`), calling `report` after each group of steps (`Report`)."""
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
                steps = per_call if count - i >= per_call else 1
                steps_fn = self._block_steps_fn(state, block, step_key, steps)
                state, out = steps_fn(state, block, step_key, np.int32(first + i), np.int32(i))
                outs.append(out)
                i += steps
            fetched = jax.device_get(outs)
            losses = np.concatenate([o["loss"] for o in fetched])
            report(first, losses, np.concatenate([o["correct"] for o in fetched]))
        return state

    def _block_steps_fn(
        self, state: TrainState, block: Batch, step_key: jax.Array, steps: int
    ) -> Callable:
        """Compile (once per `steps`, timed) and return the loop's call: `steps` consecutive
        `train_step`s on batches i, i+1, ... of a block of batches (steps, B, ...) already on
        the device, step s with key fold_in(step_key, s); outputs stacked, (steps,) each.

        Measured against a step fed one batch and one eager `fold_in` per Python call (seed
        CNN, batch 4, 2-core CPU): 3.5-3.9 vs 4.3-4.9 ms per step; the per-call transfer and
        key derivation cost the Python thread ~0.8 ms, taken from the cores XLA computes on.
        """
        if ("loop", steps) not in self._compiled:

            def run(state, block, step_key, step, i):
                images, labels = block

                def body(state, j):
                    key = jax.random.fold_in(step_key, step + j)
                    return self.train_step(state, (images[i + j], labels[i + j]), key)

                return jax.lax.scan(body, state, jnp.arange(steps))

            args = (state, block, step_key, np.int32(0), np.int32(0))
            jitted = jax.jit(run, donate_argnums=0)
            self._compiled["loop", steps] = self._timed_compile(jitted, *args)
        return self._compiled["loop", steps]


@functools.cache
def _epoch_order_fn(
    mesh: Mesh, size: int
) -> Callable[[np.int32, np.int32], tuple[jax.Array, jax.Array]]:
    """Jitted `(seed, epoch) -> (permutation of range(size), per-step key)`, replicated over
    `mesh`. Under jit so every process draws the same values straight onto the mesh; cached
    so runs in one process compile it once per (mesh, size), as the eager draw it replaced."""

    replicated = parallel.replicated_sharding(mesh)
    draw = functools.partial(epoch_order, size=size)
    return jax.jit(draw, out_shardings=(replicated, replicated))


def epoch_order(seed: jax.Array, epoch: jax.Array, size: int) -> tuple[jax.Array, jax.Array]:
    """(order in which `epoch` visits the `size` training examples: a permutation (size,)
    int32, the key from which step s's key is `fold_in(step_key, s)`)."""
    perm_key, step_key = epoch_keys(seed, epoch)
    return jax.random.permutation(perm_key, size), step_key


def epoch_keys(seed: int | jax.Array, epoch: int | jax.Array) -> tuple[jax.Array, jax.Array]:
    """(permutation key, per-step key) of `epoch` (1-based): a function of seed and epoch only
    (fold_in 1 of the seed's key; the parameter init key folds in 0: `train.init_key`)."""
    data_key = jax.random.fold_in(jax.random.key(seed), 1)
    return tuple(jax.random.split(jax.random.fold_in(data_key, epoch)))
