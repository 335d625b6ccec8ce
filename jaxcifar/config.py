"""The run configuration: one frozen dataclass whose defaults are the seed notebook's recipe,
the named recipes `train --recipe` starts from, and the scratch network's recipe.

A `RunConfig` is everything that decides a run's result (model, data, optimiser, schedule,
seed); how the run executes (epoch mode, progress bar, output folder) is not in it. It travels
into metrics.json and checkpoints as a plain dict (`to_dict` / `from_dict`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from jaxcifar.data.dataset import CLASS_NAMES
from jaxcifar.errors import ConfigError

MODELS = ("cnn", "mlp")
DATASETS = tuple(CLASS_NAMES)
OPTIMIZERS = ("sgd", "nesterov", "adam", "adamw")
# The optimizers `momentum` applies to; adam and adamw use optax's own betas (0.9, 0.999).
MOMENTUM_OPTIMIZERS = ("sgd", "nesterov")
SCHEDULES = ("constant", "cosine", "onecycle")
DTYPES = ("float32", "bfloat16")
ACTIVATIONS = ("sigmoid", "relu")  # jax.nn's functions of these names (`models.mlp`)
# The MLP's default layers, inputs to classes: the scratch notebook's MNIST network, shared
# by `jaxcifar.scratch` (NumPy) and `jaxcifar.models.mlp` (JAX).
MLP_LAYER_SIZES = (784, 500, 50, 10)
# The scratch network's recipe (`jaxcifar scratch`). Measured on Fashion-MNIST with
# 784-500-50-10, float32, seed 0: test accuracy 0.8856 after 30 epochs (0.880-0.892 over
# epochs 21-36, still rising slowly). Sigmoid units with squared error learn slowly, so the
# rate is large: 1.5 trailed 3.0 by up to 1 point over 13 epochs. A wide last hidden layer
# needs a smaller rate (see scripts/ablation_scratch.py).
SCRATCH_EPOCHS = 30
SCRATCH_BATCH_SIZE = 32
SCRATCH_LR = 3.0
# --lr-decay's choices: `scratch.train(decay=...)` is True for "linear".
SCRATCH_LR_DECAYS = ("linear", "constant")
SCRATCH_DTYPES = ("float32", "float64")
INT32_MAX = 2**31 - 1  # step counters, seeds and counts that reach jitted code are int32
SEED_MAX = INT32_MAX  # seeds travel as int32 into jitted code
# The optimizer's numbers are float32, the parameters' type whatever the compute dtype: an lr
# of 1e-50 became 0 there (a run that never moved), a momentum of 0.99999999999 became 1.
FLOAT32_TINY, FLOAT32_MAX = float(np.finfo(np.float32).tiny), float(np.finfo(np.float32).max)


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """One training run. Defaults reproduce the seed notebook: the CNN on CIFAR-10, 10 epochs
    of batch 4, SGD lr 0.001 momentum 0.9, constant rate, no augmentation.

    `limit_train` / `limit_test` (None = all) train and test on a seeded random subset.
    `mlp_hidden` / `mlp_activation` apply to the MLP only.
    """

    model: str = "cnn"
    dataset: str = "cifar10"
    epochs: int = 10
    batch_size: int = 4
    optimizer: str = "sgd"
    lr: float = 0.001
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "constant"
    augment: bool = False
    dtype: str = "float32"
    seed: int = 0
    limit_train: int | None = None
    limit_test: int | None = None
    mlp_hidden: tuple[int, ...] = MLP_LAYER_SIZES[1:-1]
    mlp_activation: str = "sigmoid"

    def __post_init__(self) -> None:
        for name, allowed in (
            ("model", MODELS), ("dataset", DATASETS), ("optimizer", OPTIMIZERS),
            ("schedule", SCHEDULES), ("dtype", DTYPES), ("mlp_activation", ACTIVATIONS),
        ):  # fmt: skip
            if getattr(self, name) not in allowed:
                raise ConfigError(
                    f"{name} must be one of {', '.join(allowed)}; got {getattr(self, name)!r}"
                )
        for name in ("epochs", "batch_size", "limit_train", "limit_test"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value <= 0):
                raise ConfigError(f"{name} must be a positive integer; got {value!r}")
        if not FLOAT32_TINY <= self.lr <= FLOAT32_MAX:
            raise ConfigError(
                f"lr must be positive and within float32's normal range, {FLOAT32_TINY:.3g} to "
                f"{FLOAT32_MAX:.3g}; got {self.lr}"
            )
        if not (0 <= self.momentum < 1 and np.float32(self.momentum) < 1):
            raise ConfigError(
                f"momentum must be in [0, 1), also once rounded to float32; got {self.momentum}"
            )
        if not 0 <= self.weight_decay <= FLOAT32_MAX:
            raise ConfigError(
                f"weight_decay must be >= 0 and at most float32's {FLOAT32_MAX:.3g}; got "
                f"{self.weight_decay}"
            )
        if self.optimizer == "nesterov" and self.momentum == 0:
            raise ConfigError("optimizer nesterov needs momentum > 0; at 0 it is plain sgd")
        if not isinstance(self.seed, int) or not 0 <= self.seed <= SEED_MAX:
            raise ConfigError(f"seed must be an integer in 0..{SEED_MAX}; got {self.seed!r}")
        if not all(isinstance(n, int) and n > 0 for n in self.mlp_hidden):
            raise ConfigError(f"mlp_hidden must be positive layer widths; got {self.mlp_hidden}")

    def to_dict(self) -> dict[str, Any]:
        """A JSON- and msgpack-friendly dict (tuples become lists)."""
        out = dataclasses.asdict(self)
        out["mlp_hidden"] = list(self.mlp_hidden)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        """Inverse of `to_dict`; unknown keys raise ConfigError."""
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown configuration keys: {', '.join(unknown)}")
        values = dict(data)
        if "mlp_hidden" in values:
            values["mlp_hidden"] = tuple(values["mlp_hidden"])
        return cls(**values)

    def resume_changes(self, saved: RunConfig) -> list[str]:
        """'field: saved -> now' for each field in which this configuration differs from
        `saved`, the one a checkpoint was made with, that a resumed run must keep.

        That is every field (another value would train the remaining epochs as another run
        than the one the checkpoint's epochs and metrics.json describe) but `limit_test`, which
        picks the evaluation subset only, `momentum` between two runs of an optimizer that
        ignores it (adam, adamw), and `epochs` under a constant schedule: raising it is how a
        run is extended. A cosine or one-cycle schedule spans the whole run, so another
        epoch count would move the rate off the saved run's curve (up, when raised) at the
        step the run resumes from."""
        changes = []
        for name in (field.name for field in dataclasses.fields(self)):
            before, now = getattr(saved, name), getattr(self, name)
            if before == now or name == "limit_test":
                continue
            if name == "momentum" and {saved.optimizer, self.optimizer}.isdisjoint(
                MOMENTUM_OPTIMIZERS
            ):
                continue
            if name != "epochs":
                changes.append(f"{name}: {before!r} -> {now!r}")
            elif self.schedule != "constant":
                changes.append(
                    f"epochs: {before} -> {now} (sets the length of the {self.schedule} "
                    "schedule; only a constant schedule can be extended)"
                )
        return changes


# Named starting points for `jaxcifar train --recipe`; flags given explicitly override them.
RECIPES = {
    "seed": RunConfig(),
    # Measured on the CIFAR-10 JPEG copy, 10 epochs each (benchmarks/results/fast-recipe-cpu/):
    # this one 72.99%. lr 0.01, not 0.02: at 0.02, seed 1 (of seeds 0-7) killed every unit of
    # fc4, the 16-unit layer (4 of them alive at its PyTorch-style init), and the run stayed
    # at chance (10.00%); at 0.01 seeds 0-9 all leave chance in the first epoch, with lower
    # first-epoch losses, and seed 0 ends higher (72.99% against 72.62%). Earlier, at 0.02:
    # with a one-cycle warm-up 71.60%; Adam lr 0.003 batch 32 one-cycle 71.27%; batch 64 with
    # crop+flip augmentation was at 58.5% after 5 of 10 epochs (this small CNN underfits:
    # augmentation needs more epochs than the budget). Batch 16 also steps fastest per image
    # of the batches tried on CPU.
    "fast": RunConfig(
        batch_size=16, optimizer="nesterov", lr=0.01, momentum=0.9, weight_decay=5e-4,
        schedule="cosine",
    ),  # fmt: skip
}
