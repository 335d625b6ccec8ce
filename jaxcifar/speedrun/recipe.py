"""The airbench94 hyperparameters, the step counts they give a training set, and their SGD rates.

The learning rate and weight decay are given in airbench's "decoupled" form (after myrtle.ai's
"How to train your ResNet 5"): `lr` is the step size per 1024 examples with the momentum's
gain removed, `weight_decay` the fraction of each weight decayed per 1024 examples whatever
the lr. The momentum's gain is airbench's convention, 1 + 1/(1 - mu) (under a constant
gradient, Nesterov's steps settle at 1/(1 - mu) times it: the convention counts one more),
so on the *summed* batch loss plain Nesterov SGD gets

    lr_sgd = lr / (1024 * (1 + 1/(1 - mu)))
    decay_per_step = weight_decay * batch / (1024 * (1 + 1/(1 - mu)))

and the decay is applied as coupled L2 with coefficient decay_per_step / lr_group, so that
each group (BatchNorm biases at `bias_scaler` x lr, everything else at lr) decays equally.
`optimizer` builds the optax transformation from these. This module imports no JAX, so the
command line can show the defaults quickly.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import NamedTuple

from jaxcifar.config import INT32_MAX
from jaxcifar.errors import ConfigError

KILO = 1024  # the "per 1024 examples" of the decoupled parametrisation
# How a run executes its epochs (see `train`): not part of the recipe, which decides results.
EPOCH_MODES = ("auto", "loop", "scan")
# Compute dtypes. float16 is airbench's own (it needs no loss scaling here: the loss is summed
# over the batch, not averaged); bfloat16 has float32's range and fewer mantissa bits.
DTYPES = ("float32", "bfloat16", "float16")
# The most channels a conv block takes: more is a typo, and XLA aborts the whole process
# (no Python error to report) compiling convolutions of 10**9 channels.
MAX_WIDTH = 2**16


@dataclasses.dataclass(frozen=True)
class Recipe:
    """One speedrun configuration; the defaults are airbench94's."""

    epochs: float = 9.9
    batch_size: int = 1024
    lr: float = 11.5  # per 1024 examples, momentum gain removed
    momentum: float = 0.85
    weight_decay: float = 0.0153  # per 1024 examples, independent of lr
    bias_scaler: float = 64.0  # lr multiplier (not decay) of BatchNorm biases
    label_smoothing: float = 0.2
    lr_start: float = 0.2  # triangular lr multiplier: start -> 1 at lr_peak -> lr_end
    lr_peak: float = 0.23  # fraction of all steps at which the multiplier peaks
    lr_end: float = 0.07
    whiten_bias_epochs: int = 3  # the whitening bias trains in epochs [0, this)
    whiten_images: int = 5000  # training images whose patches set the whitening layer
    lookahead_every: int = 5  # steps between lookahead updates
    lookahead_decay: float = 0.95  # per step; decay_pow shapes its warm-up over training
    lookahead_decay_pow: float = 3.0
    widths: tuple[int, ...] = (64, 256, 256)  # channels of the three conv blocks
    bn_momentum: float = 0.6  # fraction of a BN running statistic kept per step (torch: 0.4)
    output_scale: float = 1 / 9  # logits multiplier
    translate: int = 2  # random translation, pixels
    tta_level: int = 2  # 0: none, 1: + mirror, 2: + mirror and 1-pixel translations
    dtype: str = "bfloat16"  # compute dtype; parameters stay float32

    def whiten_bias_trains(self, epoch: int) -> bool:
        """Whether the whitening bias trains in 0-based `epoch`."""
        return epoch < self.whiten_bias_epochs

    def __post_init__(self) -> None:
        problems = []
        if not self.epochs > 0:
            problems.append(f"epochs must be > 0, got {self.epochs}")
        if self.batch_size < 2:
            problems.append(f"batch_size must be >= 2 (batch norm), got {self.batch_size}")
        if not 0 <= self.momentum < 1:
            problems.append(f"momentum must be in [0, 1), got {self.momentum}")
        if not 0 <= self.label_smoothing < 1:
            problems.append(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if not 0 < self.lr_peak < 1:
            problems.append(f"lr_peak must be in (0, 1), got {self.lr_peak}")
        if not self.widths or not 1 <= min(self.widths) <= max(self.widths) <= MAX_WIDTH:
            problems.append(f"widths must be one or more channel counts in 1..{MAX_WIDTH}, got "
                            f"{self.widths}")  # fmt: skip
        if self.tta_level not in (0, 1, 2):
            problems.append(f"tta_level must be 0, 1 or 2, got {self.tta_level}")
        if self.dtype not in DTYPES:
            problems.append(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.whiten_images < 1 or self.lookahead_every < 1 or self.translate < 0:
            problems.append("whiten_images and lookahead_every must be >= 1, translate >= 0")
        if problems:
            raise ConfigError("speedrun recipe: " + "; ".join(problems))


class Plan(NamedTuple):
    """A recipe's step counts for a training set of a given size."""

    steps_per_epoch: int  # full batches per epoch (the last partial batch is dropped)
    total_steps: int  # ceil(steps_per_epoch * epochs)
    epochs: int  # epochs begun: ceil(epochs); the last may be short

    def epoch_steps(self, epoch: int) -> int:
        """Steps in 0-based `epoch`."""
        return min(self.steps_per_epoch, self.total_steps - epoch * self.steps_per_epoch)


def plan(recipe: Recipe, train_size: int) -> Plan:
    """The step counts of `recipe` on `train_size` images; ConfigError if not one batch fits,
    or the epochs take no step or more than the int32 step counter holds; a warning if they
    end before the first lookahead update, which would leave the initial weights."""
    if recipe.batch_size > train_size:
        raise ConfigError(
            f"--batch-size {recipe.batch_size} is larger than the training set ({train_size} "
            f"images); lower --batch-size (or --limit-train less: a limit cuts the data, it "
            "adds none)"
        )
    per_epoch = train_size // recipe.batch_size
    if per_epoch * recipe.epochs > INT32_MAX:  # (else an infinite ceil, or a loop for ever)
        raise ConfigError(
            f"--epochs {recipe.epochs} of {per_epoch} step{'s' * (per_epoch != 1)} each make "
            f"{per_epoch * recipe.epochs:.3g} steps; the step counter holds {INT32_MAX:,}"
        )
    # Rounded before the ceiling: 25 * 2.2 is 55.000000000000007 in floating point, which
    # airbench's ceil(len(loader) * epochs) makes 56 steps; the recipe means 55.
    total = math.ceil(round(per_epoch * recipe.epochs, 6))
    if total == 0:  # an --epochs so small that it rounds to no step
        raise ConfigError(
            f"epochs {recipe.epochs} of {per_epoch} steps each round to no step; train at "
            f"least {1 / per_epoch:.3g} epochs"
        )
    if total < recipe.lookahead_every:  # (see train.lookahead)
        warnings.warn(
            f"{total} training {'steps end' if total != 1 else 'step ends'} before the first "
            f"lookahead update (every {recipe.lookahead_every} steps), so the run ends on its "
            "initial weights, as airbench's would; train at least "
            f"{recipe.lookahead_every / per_epoch:.3g} epochs (--epochs)",
            stacklevel=2,
        )
    return Plan(
        steps_per_epoch=per_epoch,
        total_steps=total,
        epochs=math.ceil(total / per_epoch),
    )


def sgd_rates(recipe: Recipe) -> tuple[float, float, float]:
    """(lr of the other weights, lr of the BatchNorm biases, weight decay per step) in plain
    Nesterov SGD's terms on the summed batch loss (see the module docstring)."""
    kilostep = KILO * (1 + 1 / (1 - recipe.momentum))
    lr = recipe.lr / kilostep
    return lr, lr * recipe.bias_scaler, recipe.weight_decay * recipe.batch_size / kilostep

