"""A multilayer perceptron trained by backpropagation written by hand in NumPy.

This is the classic from-scratch exercise (Jason Brownlee, "How to Code a Neural Network
with Backpropagation In Python from scratch") with its model kept -- sigmoid units
everywhere, squared error on one-hot targets, plain SGD -- and its steps named as the
notebook names them: initialize_network, pre_activation (the exercise's activate),
sigmoid_activation (transfer), forward_propagation (forward_propagate),
backward_propagate_error, update_weights and train (train_network); but vectorised over a
batch: each layer is one matrix product, with no Python loop over neurons or samples.

A network is a plain list with one dict per weight layer,
`{"weights": (n_in, n_out), "bias": (n_out,)}`, all of one float dtype. Every function
here is pure: training returns new networks and never mutates its inputs.

Inputs are flattened pixels scaled to [0, 1] (`scale_pixels`): sigmoid units are centred
on 0.5, and the exercise's own features are unscaled non-negative numbers. Keeping the
inputs small and non-negative (rather than [-1, 1]) keeps a Glorot-initialised first layer
away from saturation with 784 inputs, most of them zero (background pixels).

The public functions check the shapes and dtypes of what they are given and name the
argument (`_check_inputs`, `_check_labels`, `_check_targets`): NumPy would otherwise fail
in a matmul's gufunc signature, or broadcast (B, 1) labels or targets without a word. The
checks read shapes and dtypes only (about 1 us of a 220 us step).

NumPy only: importing this module does not import JAX.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from numpy.typing import DTypeLike

from jaxcifar.config import MLP_LAYER_SIZES
from jaxcifar.data.dataset import check_count
from jaxcifar.data.preprocess import flatten
from jaxcifar.errors import TrainingDiverged
from jaxcifar.metrics import out_of_range

Layer = dict[str, np.ndarray]
Network = list[Layer]


def initialize_network(
    layer_sizes: Sequence[int] = MLP_LAYER_SIZES,
    seed: int = 0,
    dtype: DTypeLike = np.float64,
) -> Network:
    """Random weights for a fully connected sigmoid network.

    Weights are Glorot/Xavier uniform, U(-r, r) with r = sqrt(6 / (n_in + n_out)), and
    biases are zero. The exercise draws U[0, 1) instead: with 784 positive inputs that puts
    every first-layer pre-activation in the hundreds, where the sigmoid is flat and its
    derivative is 0, so nothing trains. Glorot keeps the pre-activation variance near the
    input variance in both directions, so gradients reach the first layer.

    Args:
      layer_sizes: inputs, then the width of each hidden layer, then outputs (>= 2 entries).
      seed: seed of the NumPy generator the weights are drawn from.
      dtype: float dtype of every parameter (float64 by default; float32 is ~2x faster).
    Returns:
      One `{"weights": (n_in, n_out), "bias": (n_out,)}` dict of `dtype` per weight layer.
    Raises:
      ValueError: fewer than 2 sizes, or one not a positive integer (2.7 made a layer of 2);
        `seed` not a non-negative integer.
      TypeError: `dtype` is not a float dtype (an integer one would round every weight to 0).
    """
    if len(layer_sizes) < 2:
        raise ValueError(f"layer_sizes needs >= 2 positive sizes, got {tuple(layer_sizes)}")
    for size in layer_sizes:
        check_count(size, f"layer_sizes {tuple(layer_sizes)}: each size", ValueError)
    sizes = [int(size) for size in layer_sizes]
    if not _is_float(np.dtype(dtype)):
        raise TypeError(f"dtype must be a float dtype; got {np.dtype(dtype)}")
    rng = np.random.default_rng(_check_seed(seed))
    network = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        limit = np.sqrt(6.0 / (n_in + n_out))
        network.append(
            {
                "weights": rng.uniform(-limit, limit, size=(n_in, n_out)).astype(dtype),
                "bias": np.zeros(n_out, dtype=dtype),
            }
        )
    return network


def scale_pixels(images: np.ndarray, dtype: DTypeLike = np.float64) -> np.ndarray:
    """(N, H, W, C) uint8 pixels -> (N, H*W*C) `dtype` in [0, 1], the network's input."""
    return flatten(images).astype(dtype) / np.asarray(255, dtype)


def one_hot(labels: np.ndarray, num_classes: int, dtype: DTypeLike = np.float64) -> np.ndarray:
    """(B,) int labels -> (B, num_classes) `dtype` targets: 1 at the label, 0 elsewhere."""
    return np.eye(num_classes, dtype=dtype)[labels]


def pre_activation(weights: np.ndarray, bias: np.ndarray, inputs: np.ndarray) -> np.ndarray:
    """The exercise's `activate`: z = inputs @ weights + bias.

    Args:
      weights: (n_in, n_out) float.  bias: (n_out,) float.  inputs: (B, n_in) float.
    Returns:
      (B, n_out), the dtype of the operands.
    """
    return _matmul(inputs, weights) + bias


def _matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a @ b in the operands' dtype: NumPy returns ml_dtypes' bfloat16 products as float32
    (summed in float32, which is kept: only the result is rounded)."""
    return np.matmul(a, b).astype(np.result_type(a, b), copy=False)


def sigmoid_activation(z: np.ndarray) -> np.ndarray:
    """The exercise's `transfer`: 1 / (1 + exp(-z)), elementwise, same shape and dtype.

    The textbook formula overflows exp(-z) for z < -709 in float64 (-88 in float32) and
    warns. Here exp is only taken of -|z| <= 0: for z < 0 the same value is written
    e / (1 + e) with e = exp(z), exact to rounding over the whole range (unlike the
    overflow-free (1 + tanh(z / 2)) / 2, which cancels to 0 in the negative tail).
    """
    e = np.exp(-np.abs(z))
    out = 1 / (1 + e)  # integer 1: a float literal turns bfloat16 into float32
    return np.where(z < 0, e * out, out)


def sigmoid_derivative(out: np.ndarray) -> np.ndarray:
    """The exercise's `transfer_derivative`: d sigmoid / dz written in terms of out = sigmoid(z)."""
    return out * (1 - out)


def forward_propagation(network: Network, x: np.ndarray) -> list[np.ndarray]:
    """The exercise's `forward_propagate`, keeping every layer's output for backprop.

    Args:
      network: as from `initialize_network`.
      x: (B, n_in) float inputs.
    Returns:
      [x, a_1, ..., a_L]: the input then the (B, n_l) sigmoid output of each weight layer.
    Raises:
      TypeError / ValueError: `x` is not (B, n_in) float (`_check_inputs`).
    """
    _check_inputs(network, x, "x")
    activations = [x]
    for layer in network:
        z = pre_activation(layer["weights"], layer["bias"], activations[-1])
        activations.append(sigmoid_activation(z))
    return activations


def backward_propagate_error(
    network: Network, activations: Sequence[np.ndarray], y_onehot: np.ndarray
) -> list[np.ndarray]:
    """dLoss/dz of every weight layer, for `loss` (so averaged over the batch).

    Output layer: (a_L - y) * a_L (1 - a_L) / B. Each layer below receives the error
    through the weights above it: delta_l = (delta_{l+1} @ W_{l+1}^T) * a_l (1 - a_l).

    Args:
      network: the weights that produced `activations`.
      activations: `forward_propagation(network, x)`.
      y_onehot: (B, n_out) float targets.
    Returns:
      [delta_1, ..., delta_L], delta_l of shape (B, n_l), the activations' dtype.
    Raises:
      ValueError: `activations` are not one per layer and the input (len(network) + 1), or
        `y_onehot` is not shaped like the output (B, n_out) (`_check_targets`).
    """
    if len(activations) != len(network) + 1:  # else zip drops layers without a word
        raise ValueError(
            f"activations: {len(activations)} arrays for a network of {len(network)} layers; "
            f"expected {len(network) + 1}, forward_propagation(network, x)"
        )
    _check_targets(activations[-1], y_onehot)
    output = activations[-1]
    batch_size = output.shape[0]
    delta = (output - y_onehot) * sigmoid_derivative(output) / np.asarray(batch_size, output.dtype)
    deltas = [delta]
    # Walk down from the top; no delta is needed for the input itself.
    for layer, below in zip(network[:0:-1], activations[-2:0:-1]):
        delta = _matmul(delta, layer["weights"].T) * sigmoid_derivative(below)
        deltas.append(delta)
    return deltas[::-1]


def _parameter_gradients(
    activations: Sequence[np.ndarray], deltas: Sequence[np.ndarray]
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(dLoss/dweights, dLoss/dbias) of each layer: a_{l-1}^T @ delta_l and delta_l summed
    over B."""
    return [
        (_matmul(inputs.T, delta), delta.sum(axis=0)) for inputs, delta in zip(activations, deltas)
    ]


def update_weights(
    network: Network,
    activations: Sequence[np.ndarray],
    deltas: Sequence[np.ndarray],
    l_rate: float,
) -> Network:
    """One SGD step: a new network with params - l_rate * dLoss/dparams; `network` is unchanged.

    Raises:
      ValueError: `activations` and `deltas` are not `forward_propagation`'s L + 1 arrays and
        `backward_propagate_error`'s L for the network's L layers (zip would drop layers).
    """
    if len(activations) != len(network) + 1 or len(deltas) != len(network):
        raise ValueError(
            f"update_weights: a {len(network)}-layer network takes {len(network) + 1} "
            f"activations (the input, then each layer's output) and {len(network)} deltas; "
            f"got {len(activations)} and {len(deltas)}"
        )
    rate = network[0]["weights"].dtype.type(l_rate)  # not a Python float: keeps bfloat16
    return [
        {"weights": layer["weights"] - rate * d_weights, "bias": layer["bias"] - rate * d_bias}
        for layer, (d_weights, d_bias) in zip(network, _parameter_gradients(activations, deltas))
    ]


def loss(network: Network, x: np.ndarray, y_onehot: np.ndarray) -> float:
    """0.5 * mean over the batch of sum over outputs of (sigmoid output - target)^2.

    Args:
      x: (B, n_in) float inputs.  y_onehot: (B, n_out) float targets.
    Raises:
      As `forward_propagation` and `backward_propagate_error`.
    """
    output = forward_propagation(network, x)[-1]
    _check_targets(output, y_onehot)
    return float(0.5 * np.mean(np.sum((output - y_onehot) ** 2, axis=1)))


def gradients(network: Network, x: np.ndarray, y_onehot: np.ndarray) -> Network:
    """dLoss/dparams of `loss` for x (B, n_in) and y_onehot (B, n_out), by backpropagation,
    shaped like `network`."""
    activations = forward_propagation(network, x)
    deltas = backward_propagate_error(network, activations, y_onehot)
    return [
        {"weights": d_weights, "bias": d_bias}
        for d_weights, d_bias in _parameter_gradients(activations, deltas)
    ]


def predict(network: Network, x: np.ndarray, batch_size: int = 10_000) -> np.ndarray:
    """(B, n_in) float inputs -> (B,) int64 labels: the index of the largest output.

    Evaluated `batch_size` rows at a time, to bound the memory of the activations.
    Raises as `forward_propagation` does, and ValueError unless `batch_size` is a positive
    integer.
    """
    check_count(batch_size, "batch_size", ValueError)
    labels = [
        np.argmax(forward_propagation(network, x[start : start + batch_size])[-1], axis=1)
        for start in range(0, x.shape[0], batch_size)
    ]
    return np.concatenate(labels) if labels else np.zeros(0, dtype=np.int64)


def accuracy(network: Network, x: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of the (B, n_in) inputs whose predicted label equals `labels` (B,) int.

    Raises as `forward_propagation` does, and ValueError unless `labels` is (B,) integers,
    or when there is no input (the fraction of none is undefined: NumPy's mean gave NaN).
    """
    _check_labels(labels, len(x), "labels")
    if not len(x):
        raise ValueError(f"x {np.shape(x)} is empty: an accuracy needs at least one example")
    return float(np.mean(predict(network, x) == labels))


EpochCallback = Callable[[dict[str, Any]], None]


def train(
    network: Network,
    x: np.ndarray,
    y: np.ndarray,
    *,
    l_rate: float,
    n_epoch: int,
    batch_size: int,
    x_test: np.ndarray | None = None,
    y_test: np.ndarray | None = None,
    seed: int = 0,
    on_epoch: EpochCallback | None = None,
    decay: bool = False,
) -> tuple[Network, list[dict[str, Any]]]:
    """The exercise's `train_network`: minibatch SGD on `loss`, reshuffled every epoch.

    Args:
      network: initial parameters (not mutated); its dtype sets the dtype of the arithmetic.
      x: (N, n_in) float inputs, cast to the network's dtype.
      y: (N,) int labels in [0, n_out).
      l_rate: SGD step size.  n_epoch: passes over the data.
      batch_size: examples per step; the last step of an epoch takes the remainder.
      x_test, y_test: optional held-out (M, n_in) inputs and (M,) labels, scored per epoch;
        both or neither (ValueError otherwise).
      seed: seeds the per-epoch shuffles.
      on_epoch: called with each epoch's record as soon as the epoch ends.
      decay: lower the step size linearly per epoch, `l_rate * (n_epoch - epoch + 1) /
        n_epoch`: with a constant rate the last epochs' test accuracy wobbles by about a
        point (measured on Fashion-MNIST), so the final network is a matter of luck.
    Returns:
      The trained network and one record per epoch: `epoch` (from 1), `sum_squared_error`
      (the exercise's sum over the epoch of sum over outputs of (output - target)^2, each
      output taken in the forward pass of its own step, before that step's update),
      `train_accuracy` (of those same outputs, so it costs no extra pass), `test_accuracy`
      (None without test data, else after the epoch) and `seconds` (of training and scoring).
    Raises:
      ValueError: x_test without y_test or the reverse; `batch_size` or `n_epoch` not a
        positive integer, `l_rate` not a finite number >= 0, `seed` not a non-negative
        integer; an empty `x` or `x_test`, or one holding NaN or inf (it trained to NaN
        weights, reported as too high a rate); `y` or `y_test` not one integer label in
        [0, n_out) per row of its inputs (`_check_labels`: a label of -1 would train as the
        last class).
      TypeError / ValueError: `x` or `x_test` not (N, n_in) float (`_check_inputs`).
      TrainingDiverged: the weights are not finite after an epoch.
    """
    if (x_test is None) != (y_test is None):
        raise ValueError("x_test and y_test go together: pass both or neither")
    check_count(batch_size, "batch_size", ValueError)
    check_count(n_epoch, "n_epoch", ValueError)  # 0 trained nothing, 2.0 failed in range()
    # (0 scores the network as it is, each epoch; below 0 climbs the loss.)
    if isinstance(l_rate, bool) or not isinstance(l_rate, int | float | np.number) or not (
        np.isfinite(l_rate) and l_rate >= 0
    ):
        raise ValueError(f"l_rate must be a finite number, 0 or above; got {l_rate!r}")
    if problem := rate_problem(l_rate, network[0]["weights"].dtype):
        raise ValueError(f"l_rate {l_rate} {problem} (the network's type)")
    num_classes = network[-1]["weights"].shape[1]
    for inputs, labels, names in ((x, y, ("x", "y")), (x_test, y_test, ("x_test", "y_test"))):
        if inputs is not None:
            _check_inputs(network, inputs, names[0])
            _check_labels(labels, len(inputs), names[1], num_classes)
            if not len(inputs):
                raise ValueError(f"{names[0]} {np.shape(inputs)} is empty: there is nothing to "
                                 f"{'train on' if names[0] == 'x' else 'score'}")  # fmt: skip
            if not np.isfinite(inputs).all():
                raise ValueError(f"{names[0]} holds NaN or inf; expected finite inputs")
    dtype = network[0]["weights"].dtype
    x = np.asarray(x, dtype=dtype)
    y = np.asarray(y)
    if x_test is not None:
        x_test = np.asarray(x_test, dtype=dtype)
    rng = np.random.default_rng(_check_seed(seed))
    history = []
    for epoch in range(1, n_epoch + 1):
        start_time = time.perf_counter()
        order = rng.permutation(x.shape[0])
        epoch_rate = l_rate * (n_epoch - epoch + 1) / n_epoch if decay else l_rate
        sum_squared_error = 0.0
        correct = 0
        # A diverging epoch overflows to inf and NaN, reported once below rather than as a
        # stream of NumPy warnings (and a saturated sigmoid's exp overflow is harmless: 0).
        with np.errstate(over="ignore", invalid="ignore"):
            for start in range(0, x.shape[0], batch_size):
                index = order[start : start + batch_size]
                labels = y[index]
                y_onehot = one_hot(labels, num_classes, dtype)
                activations = forward_propagation(network, x[index])
                output = activations[-1]
                sum_squared_error += float(np.sum((output - y_onehot) ** 2))
                correct += int(np.sum(np.argmax(output, axis=1) == labels))
                deltas = backward_propagate_error(network, activations, y_onehot)
                network = update_weights(network, activations, deltas, epoch_rate)
        # The weights, not the error: it sums outputs from before each step, so an epoch's
        # last steps can overflow the weights while it stays finite; and a non-finite output
        # leaves non-finite weights, as its step spreads it to them.
        if not all(np.isfinite(value).all() for layer in network for value in layer.values()):
            raise TrainingDiverged(
                f"epoch {epoch}: the weights went non-finite; lower the learning rate "
                f"(now {l_rate})"
            )
        record = {
            "epoch": epoch,
            "sum_squared_error": sum_squared_error,
            "train_accuracy": correct / x.shape[0],
            "test_accuracy": None if x_test is None else accuracy(network, x_test, y_test),
            "seconds": time.perf_counter() - start_time,
        }
        history.append(record)
        if on_epoch is not None:
            on_epoch(record)
    return network, history


def rate_problem(l_rate: float, dtype: DTypeLike) -> str | None:
    """What is wrong with a rate `l_rate` >= 0 for a network of `dtype`, or None: a positive
    rate below the type's smallest normal number rounds to 0 there (1e-50 in float32), or
    loses its precision, and the run would not move without a word."""
    tiny = float(np.finfo(dtype).tiny)
    if 0 < l_rate < tiny:
        return (
            f"is below {np.dtype(dtype)}'s smallest normal number, {tiny:.3g}, where it rounds "
            "to 0 or loses its precision"
        )
    return None


def _check_seed(seed: int) -> int:
    """`seed`, ValueError unless a non-negative integer (NumPy's own error names no argument;
    1.5 failed inside SeedSequence)."""
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer; got {seed!r}")
    return seed


def _is_float(dtype: np.dtype) -> bool:
    """Whether `dtype` is a float type: NumPy's, or ml_dtypes' bfloat16, which NumPy's type
    tree does not count as floating."""
    return np.issubdtype(dtype, np.floating) or dtype.name == "bfloat16"


def _check_inputs(network: Network, x: np.ndarray, name: str) -> None:
    """Raise unless `x` is (B, n_in) float for the network's first layer. Integer pixels
    would enter unscaled (0..255 saturates every sigmoid: training goes badly, silently);
    unflattened images would fail in a matmul's gufunc signature."""
    x = np.asarray(x)
    if not _is_float(x.dtype):
        raise TypeError(
            f"{name} is {x.dtype}; expected float inputs in [0, 1] "
            "(uint8 pixels: scratch.scale_pixels flattens and scales them)"
        )
    n_in = network[0]["weights"].shape[0]
    if x.ndim != 2 or x.shape[1] != n_in:
        hint = ""
        if x.ndim > 2 and math.prod(x.shape[1:]) == n_in:
            hint = " (images: flatten them, as scratch.scale_pixels does)"
        elif x.shape == (n_in,):
            hint = " (one example: add the batch axis, x[None])"
        raise ValueError(
            f"{name} {x.shape}{hint}: expected (B, {n_in}), the inputs the network's first "
            "layer takes"
        )


def _check_labels(
    labels: np.ndarray, count: int, name: str, num_classes: int | None = None
) -> None:
    """Raise ValueError unless `labels` is (count,) integers, in [0, num_classes) if given:
    (count, 1) labels would broadcast against (count,) predictions to a count x count
    comparison, and a label of -1 would one-hot encode as the last class."""
    labels = np.asarray(labels)
    if labels.shape != (count,) or (labels.size and not np.issubdtype(labels.dtype, np.integer)):
        raise ValueError(
            f"{name} {labels.shape} {labels.dtype}: expected ({count},) integer class labels, "
            "one per input row (not one-hot)"
        )
    if num_classes is not None and (problem := out_of_range(labels, num_classes)):
        raise ValueError(f"{name} {problem} (the network's {num_classes} outputs)")


def _check_targets(output: np.ndarray, y_onehot: np.ndarray) -> None:
    """Raise ValueError unless `y_onehot` has the output's shape (B, n_out): (B, 1) or
    (1, n_out) targets would broadcast against it, to a wrong error without a word."""
    if np.shape(y_onehot) != output.shape:
        raise ValueError(
            f"y_onehot {np.shape(y_onehot)}: expected {output.shape}, one-hot targets shaped "
            f"like the network's output (scratch.one_hot(labels, {output.shape[1]}))"
        )
