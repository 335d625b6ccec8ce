"""Whole epochs of the fused step: one compiled loop (`lax.while_loop`) per epoch, on one device.

The epoch's order (permutation and step keys, `jaxcifar.epochs.epoch_order`) is drawn inside
the same program, so an epoch is one dispatch: the host sends the epoch number and gets back
the state and the per-step losses. `unroll` > 1 puts that many steps in each iteration of
the compiled loop (the epoch's last steps % unroll run after it), trading program size for
loop overhead. `FusedRunner` has `epochs.EpochRunner`'s interface and takes and returns its
`TrainState` (optax's SGD state holds the same momentum buffers), so `train.fit`,
checkpoints and resuming work unchanged.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from jaxcifar import epochs, train
from jaxcifar.compiling import compile_timed
from jaxcifar.config import RunConfig
from jaxcifar.data.dataset import Dataset
from jaxcifar.errors import ConfigError
from jaxcifar.fused import step
from jaxcifar.models import layers
from jaxcifar.optim import build_schedule

# The fused paths (`jaxcifar train --epoch-mode`) and what each computes in Pallas kernels:
# nothing, the dense head, or the whole step (the head and the convolutional part).
PALLAS_PARTS = {"fused": (), "fused-pallas": ("head",), "fused-pallas-all": ("head", "convs")}


def step_parts(path: str) -> tuple[step.HeadStep, step.FeaturesStep]:
    """The (head step, features step) of fused path `path`, a key of PALLAS_PARTS.

    The Pallas kernels' modules are imported only when asked for: Pallas is experimental and
    its Triton backend, which the kernels are written for, is deprecated from JAX 0.11 on;
    the XLA path and every other mode must keep working on a JAX that changes or drops it.
    Raises ConfigError when this JAX cannot import them."""
    parts = PALLAS_PARTS[path]
    if not parts:
        return step.xla_head_train_step, step.xla_features_step
    try:
        from jaxcifar.fused import pallas_convs, pallas_head
    except ImportError as error:
        raise ConfigError(
            f"--epoch-mode {path} needs Pallas' Triton backend, which this JAX "
            f"({jax.__version__}) does not import ({error}): use --epoch-mode fused, the "
            "same path in plain XLA"
        ) from None
    features = pallas_convs.features_train_step if "convs" in parts else step.xla_features_step
    return pallas_head.batch_head_train_step, features


# Where the Pallas kernels run: compiled through Triton on GPUs, interpreted (slowly: for
# tests) on CPUs. TPUs compile Pallas with Mosaic, which these kernels are not written for.
PALLAS_BACKENDS = ("gpu", "cpu")
# The Pallas head is one program holding the whole (padded) batch: compiled for an H100
# (benchmarks/triton_resources.py), batch 128 takes 128 KiB of shared memory and 129-256 (padded
# to 256) 256 KiB, over the 227 KiB a block may have. Refused on every backend alike, so that a
# run that works on a CPU works on a GPU.
PALLAS_HEAD_MAX_BATCH = 128
# fused-pallas-all's kernels read the batch from the whole training set, its uint8 pixels as
# one array whose element offsets Triton computes in int32: up to 2**31 - 1 of them (CIFAR-10
# has 153.6 million; 699,051 32x32x3 images would overflow).
PALLAS_MAX_TRAINING_PIXELS = 2**31 - 1
# XLA:GPU replays runs of kernels as command buffers (CUDA graphs), but by default not loops:
# the host launches the epoch loop's body, one graph at best, every iteration. With WHILE and
# CONDITIONAL among the command types XLA may put the whole loop in a graph whose loop the
# GPU runs itself (CUDA's conditional nodes): one launch an epoch. Only a loop whose every
# thunk a graph can hold goes in: fused-pallas-all's does, the XLA paths' cuDNN convolutions
# keep theirs out (benchmarks/gpu_programs.py, compiled for an H100 with JAX 0.10). The list
# replaces XLA's default types, so it names them too (FUSION to CUDNN, JAX 0.10's XLA's; a
# later XLA may default to more, and then the plain epoch differs in more than the loop).
GRAPH_EPOCH_OPTIONS = {
    "xla_gpu_enable_command_buffer": "FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN,WHILE,CONDITIONAL"
}


def check_config(config: RunConfig, path: str = "fused") -> None:
    """Raise ConfigError unless `config` is a recipe the fused step computes (the CNN, plain
    SGD with momentum (any schedule), no weight decay, no augmentation, float32) and `path`
    is one of PALLAS_PARTS that this machine's backend runs, at a batch size its kernels
    take."""
    if path not in PALLAS_PARTS:
        raise ConfigError(f"path must be one of {', '.join(PALLAS_PARTS)}; got {path!r}")
    if PALLAS_PARTS[path] and jax.default_backend() not in PALLAS_BACKENDS:
        raise ConfigError(
            f"--epoch-mode {path} runs its Pallas kernels through Triton, on a GPU (or "
            f"interpreted on a CPU); this machine's backend is {jax.default_backend()}: use "
            "--epoch-mode fused, the same path in plain XLA"
        )
    step_parts(path)  # refused now, before any data loads, where Pallas cannot be imported
    if "head" in PALLAS_PARTS[path] and config.batch_size > PALLAS_HEAD_MAX_BATCH:
        raise ConfigError(
            f"--epoch-mode {path} trains the dense head in one Triton program that holds the "
            f"whole batch: --batch-size up to {PALLAS_HEAD_MAX_BATCH} (more needs more shared "
            f"memory than an H100 block has); got {config.batch_size}: use --epoch-mode fused"
        )
    wrong = [f"momentum {config.momentum} (needs > 0)"] if config.momentum == 0 else []
    wrong += [
        f"{name} {value!r} (needs {needed!r})"
        for name, value, needed in (
            ("model", config.model, "cnn"),
            ("optimizer", config.optimizer, "sgd"),
            ("weight_decay", config.weight_decay, 0.0),
            ("augment", config.augment, False),
            ("dtype", config.dtype, "float32"),
        )
        if value != needed
    ]
    if wrong:
        raise ConfigError(
            f"the fused path (--epoch-mode {', '.join(PALLAS_PARTS)}) runs the seed recipe's kind "
            f"only; got {', '.join(wrong)}"
        )


def to_fused_state(state: train.TrainState) -> step.FusedState:
    """The fused path's view of a `train.TrainState` trained with `optax.sgd(schedule,
    momentum)`, whose optimizer state is (TraceState(trace=velocity), ScaleByScheduleState)."""
    trace_state, _ = state.opt_state
    return step.FusedState(state.params, trace_state.trace, state.step)


def to_train_state(state: step.FusedState) -> train.TrainState:
    """The inverse of `to_fused_state`: optax's schedule count is the number of updates, in
    a buffer of its own (the other epoch runners donate the state, and XLA refuses to be
    given one buffer twice)."""
    count = jnp.array(state.step, copy=True)
    opt_state = (optax.TraceState(trace=state.velocity), optax.ScaleByScheduleState(count=count))
    return train.TrainState(state.params, opt_state, state.step)


class FusedRunner:
    """Trains epochs of `dataset` (uint8 images, on the default device) along fused path
    `path` (a key of PALLAS_PARTS), `unroll` steps per loop iteration; with `graph`, each
    epoch compiled on a GPU with GRAPH_EPOCH_OPTIONS, which asks XLA for one CUDA graph,
    loop included (fused-pallas-all's fits; other backends have no command buffers and
    compile as without).

    Same interface as `epochs.EpochRunner` (`steps`, `compile_seconds`, `run`). Drops the last
    partial batch and draws the same order and dropout masks as `epochs.EpochRunner` for the
    same config, so both train the same way. Raises ConfigError for a recipe the fused step
    does not compute, for a mesh of more than one device, or in a multi-process run.
    """

    def __init__(
        self, config: RunConfig, dataset: Dataset, path: str = "fused", unroll: int = 1,
        mesh: Mesh | None = None, graph: bool = False,
    ):  # fmt: skip
        check_config(config, path)
        if unroll < 1:
            raise ConfigError(f"unroll must be a positive integer; got {unroll}")
        if mesh is not None and mesh.size > 1 or jax.process_count() > 1:
            raise ConfigError(
                "the fused path trains on one device in one process; this run has "
                f"{mesh.size if mesh is not None else 1} device(s) in {jax.process_count()} "
                "process(es) (--epoch-mode chunk, scan or loop trains data parallel)"
            )
        self.config = config
        self.unroll = unroll
        self.graph = graph
        if "convs" in PALLAS_PARTS[path] and dataset.images.size > PALLAS_MAX_TRAINING_PIXELS:
            raise ConfigError(
                f"--epoch-mode {path} reads the batch from the whole training set, whose "
                f"{dataset.images.size:,} pixel values are more than its kernels index (up to "
                f"{PALLAS_MAX_TRAINING_PIXELS:,}): use --epoch-mode fused-pallas or fused"
            )
        self.steps = epochs.steps_per_epoch(config.batch_size, dataset)
        head_step, features_step = step_parts(path)
        train_step = step.make_train_step(
            head_step, build_schedule(config, self.steps), config.momentum, features_step
        )
        batch_size, size, seed, steps = config.batch_size, len(dataset), config.seed, self.steps

        def run_epoch(state: step.FusedState, images: jax.Array, labels: jax.Array,
                      epoch: jax.Array):  # fmt: skip
            perm, step_key = epochs.epoch_order(seed, epoch, size)
            order = perm[: steps * batch_size].reshape(steps, batch_size)
            # Every step's dropout seed at once, one XLA kernel an epoch rather than a few a
            # step: the same seeds as each step's key gives (fold_in(step_key, step)).
            dropout_seeds = jax.vmap(
                lambda index: layers.dropout_seed(jax.random.fold_in(step_key, index))
            )(jnp.arange(steps))

            def step_at(index, state, records, offset=0):
                batch = step.StepBatch(images, labels, order, dropout_seeds, index, offset)
                return train_step(state, batch, records)

            def iteration(carry):
                first, state, records = carry
                for offset in range(unroll):
                    state, records = step_at(first, state, records, offset)
                return first + unroll, state, records

            # The steps write their records in place (the Pallas head in its kernel) rather
            # than return them for the loop to stack, an XLA kernel each a step. The loop's
            # counter is the index of its iteration's first step: `lax.scan` over the step
            # indices would slice each from an array, another XLA kernel a step on a GPU.
            records = (jnp.zeros(steps, jnp.float32), jnp.zeros(steps, jnp.int32))
            looped = steps - steps % unroll
            if looped:  # (an epoch of fewer steps than `unroll` needs no loop to trace)
                _, state, records = jax.lax.while_loop(
                    lambda carry: carry[0] < looped, iteration, (jnp.int32(0), state, records)
                )
            for index in range(looped, steps):  # the last steps % unroll, after the loop
                state, records = step_at(jnp.int32(index), state, records)
            return state._replace(step=state.step + steps), records

        self._run_epoch = jax.jit(run_epoch, donate_argnums=0)
        self.images, self.labels = jax.device_put((dataset.images, dataset.labels))
        self._compiled: Callable | None = None
        self.compile_seconds = 0.0

    def compile(self, state: train.TrainState) -> Callable:
        """The epoch program `(FusedState, images, labels, epoch) -> (FusedState, (losses,
        corrects))` for `state`'s shapes, compiled once (timed in compile_seconds)."""
        if self._compiled is None:
            args = (to_fused_state(state), self.images, self.labels, np.int32(1))
            options = GRAPH_EPOCH_OPTIONS if self.graph and jax.default_backend() == "gpu" else None
            compiled = compile_timed(self._run_epoch, *args, options=options)
            self._compiled = compiled.executable
            self.compile_seconds += compiled.compile_seconds
        return self._compiled

    def run(
        self, state: train.TrainState, epoch: int, report: epochs.Report
    ) -> train.TrainState:
        """Epoch `epoch` (1-based) from `state`, which is donated (do not use it afterwards);
        then `report(0, losses (steps,) float32, corrects (steps,) int32)`, which may raise
        to stop, as `epochs.EpochRunner.run` does."""
        fused, (losses, corrects) = self.compile(state)(
            to_fused_state(state), self.images, self.labels, np.int32(epoch)
        )
        report(0, np.asarray(losses), np.asarray(corrects))
        return to_train_state(fused)
