"""One training step of the seed recipe, split where fused kernels can take over.

The step is a *features step* (the convolutions, pooling and dropout forward; later, given
d loss / d flat, their backward pass and the momentum update of conv1 and conv2) around a
*head step*: the fully connected layers' forward pass, the mean cross-entropy, the backward
pass, the SGD-with-momentum update of fc1..fc5, and the gradient with respect to the head's
input, which flows back into the convolutions. A head step is `xla_head_train_step` (plain
JAX) or `pallas_head.batch_head_train_step` (two kernels), a features step
`xla_features_step` or `pallas_convs.features_train_step` (four kernels); each pair takes
and returns the same things, so the rest of the step does not know which runs.

Both take the step's batch as a `StepBatch`: references into the epoch's arrays on the device
(the training set, the epoch's order, its dropout seeds) and the step's row, from which the
Pallas kernels read their batch's pixels, labels and dropout mask themselves, where XLA
would spend kernels of its own on gathering them first.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxcifar.data.preprocess import to_float
from jaxcifar.models import cnn, layers
from jaxcifar.train import correct_count, cross_entropy

Params = dict[str, dict[str, jax.Array]]


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["images", "labels", "order", "dropout_seeds", "index"], meta_fields=["offset"],
)
@dataclasses.dataclass(frozen=True)
class StepBatch:
    """One step's batch, by reference: `images` (N, H, W, C) uint8 and `labels` (N,) int32,
    the training set; `order` (steps, B) int32, the epoch's batches as rows of it;
    `dropout_seeds` (steps, 4) uint32, each step's `layers.dropout_seed`; this step's row of
    both is `index`, an int32 scalar, plus `offset`, a Python int (static): an unrolled
    loop's counter and the step's place in the iteration, which the kernels add themselves
    rather than spend an XLA kernel on it."""

    images: jax.Array
    labels: jax.Array
    order: jax.Array
    dropout_seeds: jax.Array
    index: jax.Array
    offset: int = 0

    def step(self) -> jax.Array:
        """The step's row, index + offset, an int32 scalar."""
        return self.index + self.offset if self.offset else self.index

    def batch_images(self) -> jax.Array:
        """The step's images (B, H, W, C) float32 in [-1, 1] (`preprocess.to_float`)."""
        return to_float(self.images[self.order[self.step()]])

    def batch_labels(self) -> jax.Array:
        """The step's labels (B,) int32."""
        return self.labels[self.order[self.step()]]

    def dropout_keep(self, shape: tuple[int, ...]) -> jax.Array:
        """The step's dropout mask for activations of `shape`, bool: `layers.dropout_keep`'s
        for the key its seed was drawn from."""
        seed = self.dropout_seeds[self.step()]
        return layers.dropout_keep_from_seed(seed, shape, cnn.DROPOUT_RATE)


# An epoch's (losses (steps,) float32, corrects (steps,) int32): each step's mean loss and
# number of correct predictions (before its update), written at its row by its head step.
Records = tuple[jax.Array, jax.Array]
# (head params, head velocity, flat (B, n) float32, batch, learning rate, momentum, records)
# -> (new head params, new head velocity, d loss / d flat (B, n), records)
HeadStep = Callable[..., tuple[Params, Params, jax.Array, Records]]
# (conv velocity, d loss / d flat (B, n), learning rate, momentum) -> (conv params, velocity)
FinishFeatures = Callable[[Params, jax.Array, jax.Array, float], tuple[Params, Params]]
# (conv params, batch) -> (flat (B, n) float32, finish)
FeaturesStep = Callable[[Params, StepBatch], tuple[jax.Array, FinishFeatures]]


class FusedState(NamedTuple):
    """Parameters, their SGD momentum buffers (`velocity`, same pytree), and `step`, the
    number of updates before the epoch (int32): a step's learning rate is the schedule's at
    step + its batch's row, and `fused.epoch` adds the epoch's steps once, after its loop,
    rather than a scalar kernel's worth each step."""

    params: Params
    velocity: Params
    step: jax.Array


def sgd_momentum(params: Any, velocity: Any, grads: Any, learning_rate: jax.Array,
                 momentum: float) -> tuple[Any, Any]:  # fmt: skip
    """PyTorch's SGD with momentum, as `optax.sgd(lr, momentum)` computes it: v <- m*v + g,
    p <- p - lr*v (no dampening, no Nesterov). Returns (params, velocity), same pytrees."""
    velocity = jax.tree.map(lambda v, g: momentum * v + g, velocity, grads)
    params = jax.tree.map(lambda p, v: p - learning_rate * v, params, velocity)
    return params, velocity


def xla_head_train_step(
    head_params: Params, head_velocity: Params, flat: jax.Array, batch: StepBatch,
    learning_rate: jax.Array, momentum: float, records: Records,
) -> tuple[Params, Params, jax.Array, Records]:  # fmt: skip
    """The head step in plain JAX: `cnn.head` on `flat` (B, n) float32, mean cross-entropy
    against the batch's labels, its gradients, one momentum update. Returns (head params,
    head velocity, d loss / d flat (B, n) float32 at the old params, `records` with the
    loss and the number of correct predictions written at the batch's row)."""
    labels = batch.batch_labels()

    def loss_fn(head_params, flat):
        logits = cnn.head(head_params, flat)
        loss = jnp.mean(cross_entropy(logits, labels))
        return loss, correct_count(logits, labels)

    (loss, correct), (grads, d_flat) = jax.value_and_grad(loss_fn, (0, 1), has_aux=True)(
        head_params, flat
    )
    params, velocity = sgd_momentum(head_params, head_velocity, grads, learning_rate, momentum)
    losses, corrects = records
    row = batch.step()
    records = (losses.at[row].set(loss), corrects.at[row].set(correct))
    return params, velocity, d_flat, records


def xla_features_step(conv_params: Params, batch: StepBatch
                      ) -> tuple[jax.Array, FinishFeatures]:  # fmt: skip
    """The features step in plain JAX: `cnn.features(conv_params, x, train=True, rng=rng)`
    (B, n) float32 for the batch's images and the key its dropout seed was drawn from, and
    its `finish`, which backpropagates d loss / d flat with `jax.vjp` and makes one momentum
    update of conv1 and conv2."""
    x = batch.batch_images()
    # Dropout is the features' last op before flattening: the same on the flat units.
    keep = batch.dropout_keep(cnn.dropped_shape(conv_params, x.shape)).reshape(len(x), -1)

    def features(conv_params):
        return layers.apply_dropout(cnn.features(conv_params, x), keep, cnn.DROPOUT_RATE)

    flat, features_vjp = jax.vjp(features, conv_params)

    def finish(conv_velocity, d_flat, learning_rate, momentum):
        (conv_grads,) = features_vjp(d_flat)
        return sgd_momentum(conv_params, conv_velocity, conv_grads, learning_rate, momentum)

    return flat, finish


def make_train_step(
    head_step: HeadStep, schedule: Callable[[jax.Array], jax.Array], momentum: float,
    features_step: FeaturesStep = xla_features_step,
) -> Callable[[FusedState, StepBatch, Records], tuple[FusedState, Records]]:
    """`(state, batch, records) -> (state, records)`, the seed CNN's training step with the
    head computed by `head_step` and the convolutional part by `features_step`, its loss and
    correct count written into the epoch's `records` at the batch's row (`batch.step()`).

    Same function as `jaxcifar.train.make_train_step` with `optax.sgd(schedule, momentum)`:
    the same dropout mask for the key the batch's dropout seed was drawn from, the loss
    before the update; but the state's `step` is left as it is (`FusedState`). Not jitted:
    it is the body of `fused.epoch`'s loop.
    """

    def train_step(state: FusedState, batch: StepBatch, records: Records):
        conv_params = {name: state.params[name] for name in cnn.CONV_LAYERS}
        head_params = {name: state.params[name] for name in cnn.DENSE_LAYERS}
        head_velocity = {name: state.velocity[name] for name in cnn.DENSE_LAYERS}
        flat, finish_features = features_step(conv_params, batch)
        learning_rate = schedule(state.step + batch.step())
        head_params, head_velocity, d_flat, records = head_step(
            head_params, head_velocity, flat, batch, learning_rate, momentum, records
        )
        conv_velocity = {name: state.velocity[name] for name in cnn.CONV_LAYERS}
        conv_params, conv_velocity = finish_features(
            conv_velocity, d_flat, learning_rate, momentum
        )
        state = FusedState(
            {**conv_params, **head_params}, {**conv_velocity, **head_velocity}, state.step
        )
        return state, records

    return train_step
