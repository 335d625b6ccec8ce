"""A speedrun: the whole training set on the device, every step's data work inside jit.

Each step gathers its batch from the device-resident uint8 images by a per-epoch permutation,
applies the alternating flip and a random translation, standardises each channel by the
training set's mean and standard deviation (as airbench does with CIFAR-10's), and takes an SGD
step followed by the lookahead update, all in one compiled program. An epoch is either one
`lax.scan` over its steps ("scan": one dispatch per epoch, the default) or a Python loop of
jitted steps ("loop"). Both run the same step function and give the same result.

Randomness: a run's key splits into the init, whitening-sample, flip and data keys; epoch e's
permutation and step i's translations come from `fold_in(data key, e)`, so a run is a function
of its seed alone, whatever the epoch mode.
"""

from __future__ import annotations

import functools
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxcifar import augment, metrics
from jaxcifar.compiling import compile_timed
from jaxcifar.data.dataset import Dataset
from jaxcifar.data.preprocess import channel_stats, standardize
from jaxcifar.errors import ConfigError, DataError, TrainingDiverged
from jaxcifar.speedrun import net, optimizer, tta, whitening
from jaxcifar.speedrun import recipe as recipes
from jaxcifar.speedrun.recipe import EPOCH_MODES, Plan, Recipe

EVAL_BATCH = 2000
# How every speedrun program compiles (and a saved model's predictions). By default XLA may
# keep a value in float32 where the program rounds it to bfloat16 and back ("excess
# precision"): on a GPU it then keeps whole activations and gradients in float32 between
# kernels, at twice the bytes (batch norm's input gradient, GELU's output). Rounding where
# the program says, as airbench's half-precision network does, a step compiled for an H100
# read and wrote 3.67 GB, not 4.14, in 158 kernels, not 159 (benchmarks/README.md).
# bfloat16 results change on any backend (as much as rounding moves them); float32 ones
# do not.
XLA_OPTIONS = {"xla_allow_excess_precision": False}


class TrainState(NamedTuple):
    """Everything a run carries from step to step."""

    params: net.Params  # float32 master weights
    batch_stats: net.BatchStats  # BN running statistics, float32
    opt_state: Any
    lookahead: tuple[net.Params, net.BatchStats]  # the EMA of (params, batch_stats)
    base_flip: jax.Array  # (N,) bool: image i is mirrored in even epochs iff True
    key: jax.Array  # the run's data key (permutations, translations)
    step: jax.Array  # int32 scalar, steps taken


class DeviceData(NamedTuple):
    """The training set on the device, with the channel statistics inputs are standardised by."""

    images: jax.Array  # (N, H, W, C) uint8
    labels: jax.Array  # (N,) int32
    mean: jax.Array  # (C,) float32: the training images' channel means, [0, 1] units
    std: jax.Array  # (C,) float32: their standard deviations


def init_state(
    recipe: Recipe, tx: optax.GradientTransformation, num_classes: int,
    key: jax.Array, data: DeviceData,
) -> TrainState:  # fmt: skip
    """A fresh run from `key`: new weights, the whitening kernel from a random
    `recipe.whiten_images` of the training images, and a random flip per image."""
    init_key, whiten_key, flip_key, data_key = jax.random.split(key, 4)
    n, _, _, channels = data.images.shape
    params, batch_stats = net.init(
        init_key, widths=recipe.widths, in_channels=channels, num_classes=num_classes
    )
    sample = jax.random.permutation(whiten_key, n)[: recipe.whiten_images]
    sample_images = standardize(data.images[sample], data.mean, data.std)
    kernel = whitening.whitening_kernel(sample_images, net.WHITEN_PATCH)
    params["whiten"]["kernel"] = kernel
    return TrainState(
        params=params,
        batch_stats=batch_stats,
        opt_state=tx.init(params),
        lookahead=(params, batch_stats),
        base_flip=jax.random.bernoulli(flip_key, 0.5, (n,)),
        key=data_key,
        step=jnp.zeros((), jnp.int32),
    )


def data_keys(state: TrainState, epoch: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(permutation key, translation key) of 0-based `epoch`."""
    return tuple(jax.random.split(jax.random.fold_in(state.key, epoch)))


def visit_order(state: TrainState, epoch: jax.Array, size: int) -> jax.Array:
    """(size,) int32: the order in which `epoch` visits the training images."""
    return jax.random.permutation(data_keys(state, epoch)[0], size)


def lookahead(
    recipe: Recipe, plan: Plan, step: jax.Array, weights: Any, ema: Any
) -> tuple[Any, Any]:
    """(weights, ema) after 1-based `step`. Every `lookahead_every` steps the EMA (which
    starts as the initial weights) moves toward the weights and the weights are replaced by
    it; after the last step the weights are set to the EMA, which drops the steps taken
    since its last update, as airbench does."""
    update = step % recipe.lookahead_every == 0
    decay = optimizer.lookahead_decay(recipe, plan, step)
    moved = jax.tree.map(lambda e, w: e + (1 - decay) * (w - e), ema, weights)
    ema = jax.tree.map(functools.partial(jnp.where, update), moved, ema)
    reset = update | (step == plan.total_steps)
    weights = jax.tree.map(functools.partial(jnp.where, reset), ema, weights)
    return weights, ema


def batch_loss(
    recipe: Recipe, params: net.Params, batch_stats: net.BatchStats,
    inputs: jax.Array, labels: jax.Array,
) -> tuple[jax.Array, net.BatchStats]:  # fmt: skip
    """(summed smoothed cross-entropy, float32 scalar; updated BN statistics) of a
    training-mode forward pass over standardised inputs (B, H, W, C) with labels (B,)."""
    logits, batch_stats = net.apply(
        params, batch_stats, inputs, train=True, dtype=jnp.dtype(recipe.dtype),
        bn_momentum=recipe.bn_momentum, output_scale=recipe.output_scale,
    )  # fmt: skip
    return optimizer.loss(logits, labels, recipe.label_smoothing), batch_stats


def augmented_batch(
    recipe: Recipe, state: TrainState, data: DeviceData, order: jax.Array, epoch: jax.Array,
    index: jax.Array,
) -> tuple[jax.Array, jax.Array]:  # fmt: skip
    """Step `index` of 0-based `epoch`, whose image order is `order` (N,): its (B, H, W, C)
    uint8 images, flipped and translated, and their (B,) labels."""
    batch = jax.lax.dynamic_slice(order, (index * recipe.batch_size,), (recipe.batch_size,))
    images, labels = data.images[batch], data.labels[batch]
    # Alternating flip: each image's own coin in even epochs, the opposite in odd ones.
    images = augment.flip_where(state.base_flip[batch] ^ (epoch % 2 == 1), images)
    if recipe.translate:
        translate_key = jax.random.fold_in(data_keys(state, epoch)[1], index)
        images = augment.random_translate(translate_key, images, recipe.translate)
    return images, labels


def train_step(
    recipe: Recipe, plan: Plan, tx: optax.GradientTransformation,
    state: TrainState, data: DeviceData, order: jax.Array, epoch: jax.Array, index: jax.Array,
    *, whiten_bias: bool,
) -> tuple[TrainState, jax.Array]:  # fmt: skip
    """Step `index` of 0-based `epoch` whose image order is `order` (N,): returns the new
    state and the batch's mean loss (float32 scalar, before the update). `whiten_bias`
    (static: `recipe.whiten_bias_trains(epoch)`) says whether the whitening bias trains."""
    images, labels = augmented_batch(recipe, state, data, order, epoch, index)
    inputs = standardize(images, data.mean, data.std)

    def loss_fn(params: net.Params) -> tuple[jax.Array, net.BatchStats]:
        if not whiten_bias:
            # Frozen, as airbench94 freezes it after its first epochs. With no gradient asked
            # of it, nothing below block 1's first convolution needs one, and XLA drops that
            # convolution's input gradient and GELU's backward pass (benchmarks/README.md).
            params = _with_whiten_bias(params, jax.lax.stop_gradient(params["whiten"]["bias"]))
        return batch_loss(recipe, params, state.batch_stats, inputs, labels)

    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    if not whiten_bias:  # nor does weight decay move it
        updates = _with_whiten_bias(updates, jnp.zeros_like(updates["whiten"]["bias"]))
    step = state.step + 1
    params = optax.apply_updates(state.params, updates)
    weights = (params, batch_stats)
    (params, batch_stats), ema = lookahead(recipe, plan, step, weights, state.lookahead)
    new_state = state._replace(
        params=params, batch_stats=batch_stats, opt_state=opt_state, lookahead=ema, step=step
    )
    return new_state, loss / recipe.batch_size


def _with_whiten_bias(tree: dict, bias: jax.Array) -> dict:
    """`tree` (shaped as the parameters) with its whitening bias replaced by `bias`."""
    return {**tree, "whiten": {**tree["whiten"], "bias": bias}}


def scan_epoch(
    recipe: Recipe, plan: Plan, tx: optax.GradientTransformation, steps: int,
    state: TrainState, data: DeviceData, epoch: jax.Array, *, whiten_bias: bool,
) -> tuple[TrainState, jax.Array]:  # fmt: skip
    """`steps` steps of `epoch` as one lax.scan: (new state, (steps,) float32 losses);
    `whiten_bias` as `train_step` takes it."""
    order = visit_order(state, epoch, data.labels.shape[0])
    step = functools.partial(train_step, recipe, plan, tx, whiten_bias=whiten_bias)
    return jax.lax.scan(lambda s, i: step(s, data, order, epoch, i), state, jnp.arange(steps))


def tta_logits(recipe: Recipe, params: net.Params, batch_stats: net.BatchStats,
               mean: jax.Array, std: jax.Array, images: jax.Array) -> jax.Array:  # fmt: skip
    """(M, K) float32 test-time-augmented logits of uint8 images (M, H, W, C), standardised
    by the training set's channel `mean` and `std` ((C,) float32, [0, 1] units)."""

    def logits(x: jax.Array) -> jax.Array:
        out, _ = net.apply(
            params, batch_stats, x, train=False, dtype=jnp.dtype(recipe.dtype),
            bn_momentum=recipe.bn_momentum, output_scale=recipe.output_scale,
        )  # fmt: skip
        return out

    return tta.tta_logits(logits, standardize(images, mean, std), recipe.tta_level)


def predict(recipe: Recipe, params: net.Params, batch_stats: net.BatchStats,
            mean: jax.Array, std: jax.Array, images: jax.Array) -> jax.Array:  # fmt: skip
    """(B, M) int32 TTA predictions for uint8 images (B, M, H, W, C), one batch of M at a time
    (`tta_logits`' standardisation); -1 for an image whose logits are not all finite, so a
    diverged model is told from one that predicts class 0 (NaN's argmax)."""

    def batch(x: jax.Array) -> jax.Array:
        logits = tta_logits(recipe, params, batch_stats, mean, std, x)
        finite = jnp.isfinite(logits).all(-1)
        return jnp.where(finite, jnp.argmax(logits, -1), -1).astype(jnp.int32)

    return jax.lax.map(batch, images)


class RunResult(NamedTuple):
    """One timed speedrun run (`Speedrun.run`)."""

    seed: int  # the run's: it is a function of this alone
    seconds: float  # whitening + training + TTA test predictions, as airbench counts
    tta_accuracy: float
    epoch_losses: list[float]  # mean training loss of each epoch
    state: TrainState


class Speedrun:
    """A recipe compiled for one training and one test set; `run(seed)` trains and tests.

    Everything is compiled ahead of time in the constructor (`compile_seconds`), so runs time
    warm execution only. `epoch_mode`: "scan" (or "auto"), or "loop". The training set lives
    on the device in both.
    """

    def __init__(self, recipe: Recipe, train_set: Dataset, test_set: Dataset, *,
                 epoch_mode: str = "auto"):  # fmt: skip
        if epoch_mode not in EPOCH_MODES:
            raise ConfigError(
                f"epoch mode must be one of {', '.join(EPOCH_MODES)}, got {epoch_mode!r}"
            )
        self.recipe = recipe
        height, width = train_set.images.shape[1:3]
        if (fit := net.max_blocks(height, width)) == 0:  # no --widths would do
            side = net.WHITEN_PATCH + 1
            raise DataError(
                f"{train_set.source} holds images of (H, W) {(height, width)}: the speedrun "
                f"net's whitening conv and first block's pooling need {side}x{side} or larger"
            )
        if len(recipe.widths) > fit:
            # More blocks pool the image away; tracing would fail on an argmax over no pixels.
            raise ConfigError(
                f"--widths: {len(recipe.widths)} conv blocks do not fit images of (H, W) "
                f"{(height, width)}; each block halves the image, so at most {fit} fit: give "
                f"at most {fit} width{'s' * (fit != 1)}"
            )
        self.plan = recipes.plan(recipe, len(train_set))  # after: it may warn of the steps
        self.mode = "scan" if epoch_mode == "auto" else epoch_mode
        self.tx = optimizer.build_optimizer(recipe, self.plan.total_steps)
        # The channel statistics are the dataset's, like airbench's CIFAR-10 constants: not timed.
        mean, std = channel_stats(train_set.images)
        self.train_data = DeviceData(
            *jax.device_put((train_set.images, train_set.labels, mean, std))
        )
        self.test_labels = test_set.labels
        self.test_images = jax.device_put(batched(test_set.images, EVAL_BATCH))
        self.num_classes = train_set.num_classes
        self.compile_seconds = self._compile()

    def _compile(self) -> float:
        """Lower and compile every program a run calls; returns the seconds it took."""
        recipe, plan, tx = self.recipe, self.plan, self.tx
        # Besides giving shapes, this compiles `jax.random.key`, which `run` calls in its timer.
        key, epoch = jax.random.key(0), jnp.zeros((), jnp.int32)
        compile_ = functools.partial(compile_timed, options=XLA_OPTIONS)
        init = jax.jit(functools.partial(init_state, recipe, tx, self.num_classes))
        compiled = {"init": compile_(init, key, self.train_data)}
        state = jax.eval_shape(init, key, self.train_data)
        if self.mode == "loop":
            size = self.train_data.labels.shape[0]
            order = jax.jit(functools.partial(visit_order, size=size))
            compiled["order"] = compile_(order, state, epoch)
            order_shape = jax.ShapeDtypeStruct((size,), jnp.int32)
            index = epoch  # an int32 scalar like the epoch
            step_args = (state, self.train_data, order_shape, epoch, index)
        programs = {name: (steps, whiten_bias) for name, steps, whiten_bias in
                    map(self._program_for_epoch, range(plan.epochs))}  # fmt: skip
        for name, (steps, whiten_bias) in sorted(programs.items()):
            if self.mode == "scan":
                epoch_fn = functools.partial(
                    scan_epoch, recipe, plan, tx, steps, whiten_bias=whiten_bias
                )
                compiled[name] = compile_(
                    jax.jit(epoch_fn, donate_argnums=0), state, self.train_data, epoch
                )
            else:
                step_fn = functools.partial(train_step, recipe, plan, tx, whiten_bias=whiten_bias)
                compiled[name] = compile_(jax.jit(step_fn, donate_argnums=0), *step_args)
        predict_fn = jax.jit(functools.partial(predict, recipe))
        data = self.train_data
        compiled["predict"] = compile_(
            predict_fn, state.params, state.batch_stats, data.mean, data.std, self.test_images
        )
        self._executables = {name: c.executable for name, c in compiled.items()}
        return sum(c.compile_seconds for c in compiled.values())  # lowering included

    def _program_for_epoch(self, epoch: int) -> tuple[str, int, bool]:
        """(name of the program that runs 0-based `epoch`, its steps, whether the whitening
        bias trains in it): an epoch program per pair in scan mode, a step per flag in loop
        mode."""
        steps, whiten_bias = self.plan.epoch_steps(epoch), self.recipe.whiten_bias_trains(epoch)
        name = f"epoch{steps}" if self.mode == "scan" else "step"
        return (name if whiten_bias else f"{name} frozen bias"), steps, whiten_bias

    def _train(self, state: TrainState) -> tuple[TrainState, list[jax.Array]]:
        run, losses = self._executables, []
        for e in range(self.plan.epochs):
            epoch = jnp.asarray(e, jnp.int32)
            name, steps, _ = self._program_for_epoch(e)
            if self.mode == "scan":
                state, epoch_losses = run[name](state, self.train_data, epoch)
                losses.append(epoch_losses)
            else:
                order = run["order"](state, epoch)
                for i in range(steps):
                    index = jnp.asarray(i, jnp.int32)
                    state, loss = run[name](state, self.train_data, order, epoch, index)
                    losses.append(loss)
        return state, losses

    def run(self, seed: int) -> RunResult:
        """Train from `seed` and predict the test set with TTA. Raises TrainingDiverged when
        a step's loss or the trained model's test logits are not finite."""
        start = time.perf_counter()
        state = self._executables["init"](jax.random.key(seed), self.train_data)
        state, losses = self._train(state)
        predict = self._executables["predict"]
        data = self.train_data
        predictions = predict(
            state.params, state.batch_stats, data.mean, data.std, self.test_images
        )
        predictions = np.asarray(predictions).reshape(-1)[: len(self.test_labels)]
        seconds = time.perf_counter() - start
        step_losses = np.concatenate([np.atleast_1d(np.asarray(x)) for x in losses])
        if not np.all(np.isfinite(step_losses)):
            bad = int(np.flatnonzero(~np.isfinite(step_losses))[0])
            raise TrainingDiverged(
                f"speedrun seed {seed}: loss became {step_losses[bad]} at step {bad + 1}"
            )
        if (predictions < 0).any():  # the last steps overflowed, after their losses
            raise TrainingDiverged(
                f"speedrun seed {seed}: the test logits became non-finite after the last step, "
                f"every step's loss finite"
            )
        per_epoch = self.plan.steps_per_epoch
        epoch_losses = [
            float(step_losses[i : i + per_epoch].mean())
            for i in range(0, len(step_losses), per_epoch)
        ]
        matrix = metrics.confusion_matrix(self.test_labels, predictions, self.num_classes)
        return RunResult(seed, seconds, metrics.accuracy(matrix), epoch_losses, state)


def batched(images: np.ndarray, batch: int) -> np.ndarray:
    """(N, ...) -> (ceil(N / b), b, ...) with b = min(batch, N), zero-padded at the end
    (what `predict` takes). Raises DataError on no images."""
    if not len(images):
        raise DataError("no images to predict: expected at least one")
    size = min(batch, len(images))
    count = -(-len(images) // size)
    padded = np.zeros((count * size, *images.shape[1:]), images.dtype)
    padded[: len(images)] = images
    return padded.reshape(count, size, *images.shape[1:])
