"""The speedrun's optimizer, learning-rate schedule, loss and lookahead decay (JAX, optax)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxcifar.speedrun.recipe import Plan, Recipe, sgd_rates


def lr_multiplier(recipe: Recipe, total_steps: int) -> optax.Schedule:
    """0-based step -> lr multiplier (float32): linear from `lr_start` up to 1 at step
    int(lr_peak * total_steps), then linear down to `lr_end` at `total_steps`; `lr_start`
    before step 0 and `lr_end` after the end, as `jnp.interp` over those three points.

    Written out as float32 arithmetic (equal to `jnp.interp` to float32 rounding): on a GPU
    it fuses into the step's other kernels, where `jnp.interp`'s searchsorted was a while
    loop of its own, two a step with the two parameter groups' rates
    (benchmarks/gpu_programs.py)."""
    peak = max(int(recipe.lr_peak * total_steps), 1)
    xs = np.array([0, peak, max(total_steps, peak + 1)], np.float32)
    ys = np.array([recipe.lr_start, 1.0, recipe.lr_end], np.float32)

    def multiplier(step: jax.Array) -> jax.Array:
        x = jnp.asarray(step, jnp.float32)
        rising, falling = (
            ys[i] + ((x - xs[i]) / (xs[i + 1] - xs[i])) * (ys[i + 1] - ys[i]) for i in (0, 1)
        )
        inside = jnp.where(x < xs[1], rising, falling)
        return jnp.where(x < xs[0], ys[0], jnp.where(x > xs[2], ys[2], inside))

    return multiplier


def param_groups(params: Any) -> Any:
    """The optimizer group of each leaf: "frozen" (the whitening kernel), "norm_bias"
    (BatchNorm biases) or "other"."""

    def group(path, _):
        names = [getattr(key, "key", None) for key in path]
        if names[:2] == ["whiten", "kernel"]:
            return "frozen"
        return "norm_bias" if any(str(n).startswith("norm") for n in names) else "other"

    return jax.tree_util.tree_map_with_path(group, params)


def build_optimizer(recipe: Recipe, total_steps: int) -> optax.GradientTransformation:
    """Nesterov SGD with coupled L2, per group (torch.optim.SGD's update, which airbench
    uses): g += (decay / lr_g) * w; v = mu * v + g; w -= lr_g * multiplier(step) * (g + mu * v).
    The whitening kernel never moves."""
    lr, lr_bias, decay = sgd_rates(recipe)
    multiplier = lr_multiplier(recipe, total_steps)

    def sgd(group_lr: float) -> optax.GradientTransformation:
        return optax.chain(
            optax.add_decayed_weights(decay / group_lr),
            optax.sgd(lambda step: group_lr * multiplier(step), recipe.momentum, nesterov=True),
        )

    transforms = {"other": sgd(lr), "norm_bias": sgd(lr_bias), "frozen": optax.set_to_zero()}
    return optax.multi_transform(transforms, param_groups)


def loss(logits: jax.Array, labels: jax.Array, smoothing: float) -> jax.Array:
    """Summed label-smoothed cross-entropy: (N, K) float32 logits, (N,) int labels -> scalar.
    The sum, not the mean, is what `sgd_rates` is scaled for."""
    targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), smoothing)
    return optax.softmax_cross_entropy(logits, targets).sum()


def lookahead_decay(recipe: Recipe, plan: Plan, step: jax.Array) -> jax.Array:
    """The EMA decay at 1-based `step`, lookahead_decay**every * (step / total_steps)**pow:
    near 0 early (the EMA follows the weights), strong late (it averages them)."""
    base = recipe.lookahead_decay**recipe.lookahead_every
    return base * (step / plan.total_steps) ** recipe.lookahead_decay_pow
