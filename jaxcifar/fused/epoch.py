"""Whole epochs of the fused step: one compiled `lax.scan` per epoch, on one device.

The epoch's order (permutation and step keys, `jaxcifar.train.epoch_order`) is drawn inside
the same program, so an epoch is one dispatch: the host sends the epoch number and gets back
the state and the per-step losses. `unroll` > 1 puts that many steps in each iteration of
the compiled loop, trading program size for loop overhead.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxcifar import train
from jaxcifar.config import RunConfig
from jaxcifar.data.dataset import Dataset
from jaxcifar.errors import ConfigError
from jaxcifar.fused import pallas_head, step
from jaxcifar.optim import build_schedule

HEADS: dict[str, step.HeadStep] = {
    "xla": step.xla_head_train_step,
    "pallas": pallas_head.head_train_step,
}


def check_config(config: RunConfig) -> None:
    """Raise ConfigError unless `config` is a recipe the fused step computes: the CNN, plain
    SGD (any momentum and schedule), no weight decay, no augmentation, float32."""
    wrong = [
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
        raise ConfigError(f"the fused path runs the seed recipe's kind only; got {', '.join(wrong)}")


class FusedRunner:
    """Trains epochs of `dataset` (uint8 images, on the default device) with the fused step
    and head `head` ("xla" or "pallas"), `unroll` steps per loop iteration.

    Drops the last partial batch and draws the same order and dropout masks as
    `train.EpochRunner` for the same config, so both paths train the same way.
    """

    def __init__(self, config: RunConfig, dataset: Dataset, head: str = "xla", unroll: int = 1):
        check_config(config)
        if head not in HEADS:
            raise ConfigError(f"head must be one of {', '.join(HEADS)}; got {head!r}")
        if unroll < 1:
            raise ConfigError(f"unroll must be a positive integer; got {unroll}")
        self.unroll = unroll
        self.steps = len(dataset) // config.batch_size
        if self.steps == 0:
            raise ConfigError(
                f"--batch-size {config.batch_size} is larger than the training set ({len(dataset)})"
            )
        train_step = step.make_train_step(
            HEADS[head], build_schedule(config, self.steps), config.momentum
        )
        batch_size, size, seed, steps = config.batch_size, len(dataset), config.seed, self.steps

        def run_epoch(state: step.FusedState, images: jax.Array, labels: jax.Array,
                      epoch: jax.Array):  # fmt: skip
            perm, step_key = train.epoch_order(seed, epoch, size)

            def body(state, index):
                rows = jax.lax.dynamic_slice(perm, (index * batch_size,), (batch_size,))
                batch = (images[rows], labels[rows])
                state, out = train_step(state, batch, jax.random.fold_in(step_key, index))
                return state, (out["loss"], out["correct"])

            return jax.lax.scan(body, state, jnp.arange(steps), unroll=unroll)

        self._run_epoch = jax.jit(run_epoch, donate_argnums=0)
        self.images, self.labels = jax.device_put((dataset.images, dataset.labels))
        self._compiled: Callable | None = None
        self.compile_seconds = 0.0

    def compile(self, state: step.FusedState) -> Callable:
        """The epoch program for `state`'s shapes, compiled once (timed in compile_seconds)."""
        if self._compiled is None:
            start = time.perf_counter()
            args = (state, self.images, self.labels, np.int32(1))
            self._compiled = self._run_epoch.lower(*args).compile()
            self.compile_seconds += time.perf_counter() - start
        return self._compiled

    def run(self, state: step.FusedState, epoch: int) -> tuple[step.FusedState, np.ndarray, np.ndarray]:
        """Epoch `epoch` (1-based): (state, per-step losses (steps,) float32, per-step correct
        counts (steps,) int32). `state` is donated: do not use it afterwards."""
        state, (losses, corrects) = self.compile(state)(
            state, self.images, self.labels, np.int32(epoch)
        )
        return state, np.asarray(losses), np.asarray(corrects)
