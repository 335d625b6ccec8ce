"""Optimizer and learning-rate schedule construction from a `RunConfig` (optax)."""

from __future__ import annotations

import optax

from jaxcifar.config import INT32_MAX, RunConfig
from jaxcifar.errors import ConfigError


def build_schedule(config: RunConfig, steps_per_epoch: int) -> optax.Schedule:
    """Step -> learning rate: constant `lr`, cosine decay from `lr` to 0 over the run, or a
    one-cycle ramp (to `lr` over the first 30% of steps, then cosine annealing down).

    Raises ConfigError for a run of more steps than an int32 counts: optax's step count is
    int32, and its schedules take the run's length as one."""
    total_steps = config.epochs * steps_per_epoch
    if total_steps > INT32_MAX:
        raise ConfigError(
            f"epochs {config.epochs} x {steps_per_epoch} steps an epoch = {total_steps:,} steps, "
            f"more than the optimizer's int32 step count holds ({INT32_MAX:,})"
        )
    if config.schedule == "constant":
        return optax.constant_schedule(config.lr)
    if config.schedule == "cosine":
        return optax.cosine_decay_schedule(config.lr, total_steps)
    return optax.cosine_onecycle_schedule(total_steps, config.lr)


def build_optimizer(config: RunConfig, steps_per_epoch: int) -> optax.GradientTransformation:
    """The optimizer named by `config.optimizer`, with its schedule and weight decay.

    sgd / nesterov: PyTorch-style SGD (momentum buffer v = mu*v + g, no dampening); a
    non-zero weight_decay is coupled L2 (wd * params added to the gradient), as in
    torch.optim.SGD. adam: Adam with the same coupled L2. adamw: decoupled weight decay.
    """
    lr = build_schedule(config, steps_per_epoch)
    momentum = config.momentum or None
    if config.optimizer == "adamw":
        return optax.adamw(lr, weight_decay=config.weight_decay)
    if config.optimizer == "adam":
        base = optax.adam(lr)
    else:
        base = optax.sgd(lr, momentum=momentum, nesterov=config.optimizer == "nesterov")
    if config.weight_decay:
        return optax.chain(optax.add_decayed_weights(config.weight_decay), base)
    return base
