"""The NumPy reference: one SGD step of `jaxcifar.scratch`'s hand-written backprop network."""

from __future__ import annotations

import numpy as np

from jaxcifar import scratch
from jaxcifar.bench.rows import Row, step_row
from jaxcifar.bench.timing import TimingBudget, time_steps
from jaxcifar.config import MLP_LAYER_SIZES

# The scratch network is the 784-500-50-10 sigmoid MLP; its twin in JAX is
# jax_cases.measure_scratch_twin. Both run in float32 (scratch's own default is float64).
LEARNING_RATE = 0.1


def measure_scratch_step(images: np.ndarray, labels: np.ndarray, budget: TimingBudget) -> Row:
    """Time forward_propagation + backward_propagate_error + update_weights on one batch.

    Args:
      images: (B, 28, 28, 1) uint8, scaled to [0, 1] as scratch's trainer does.
      labels: (B,) int in [0, 10).
    """
    x = scratch.scale_pixels(images, np.float32)
    y_onehot = scratch.one_hot(labels, MLP_LAYER_SIZES[-1], np.float32)
    network = scratch.initialize_network(MLP_LAYER_SIZES, seed=0, dtype=np.float32)

    def step() -> None:
        nonlocal network
        activations = scratch.forward_propagation(network, x)
        deltas = scratch.backward_propagate_error(network, activations, y_onehot)
        network = scratch.update_weights(network, activations, deltas, LEARNING_RATE)

    seconds = time_steps(step, budget)
    shape = images.shape[1:]
    return step_row("numpy", "mlp", "scratch_step", len(images), "float32", shape, seconds,
                    flops_per_step=scratch_step_flops(len(images)))  # fmt: skip


def scratch_step_flops(batch_size: int) -> float:
    """FLOPs of one scratch step, counted as XLA counts them (a multiply-add is 2): the
    forward pass and the weight gradients each multiply every weight matrix with the batch
    once, the error travels back through every matrix but the first, and the update
    p - lr * g costs 2 per parameter. The activations' elementwise work is left out: XLA's
    count of the JAX twin is 0.2% higher at batch 4."""
    weights = [n_in * n_out for n_in, n_out in zip(MLP_LAYER_SIZES, MLP_LAYER_SIZES[1:])]
    parameters = sum(weights) + sum(MLP_LAYER_SIZES[1:])
    return 2.0 * batch_size * (2 * sum(weights) + sum(weights[1:])) + 2.0 * parameters
