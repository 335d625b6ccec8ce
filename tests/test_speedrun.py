"""The fast CIFAR-10 recipe (jaxcifar.speedrun) and the `jaxcifar speedrun` command.

One tiny real-data run (64 CIFAR-10 training images, batch 32, 4 epochs, float32, the
recipe with narrow conv blocks so a 2-core CPU runs it in seconds) is compiled once per
module into a module-wide persistent compilation cache; the command test trains the same
shapes and so loads its programs from that cache instead of compiling again.
"""

from __future__ import annotations

import dataclasses
import warnings
import functools
import itertools
import json
import math
import os
import re
import shutil
import signal
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from PIL import Image

from jaxcifar import augment, cli, compiling
from jaxcifar.commands.evaluate import EvalSubset, speedrun_test_subset
from jaxcifar.compiling import compile_timed
from jaxcifar.data import load, load_split
from jaxcifar.data.dataset import CIFAR10_CLASSES, Dataset
from jaxcifar.errors import CheckpointError, ConfigError, DataError, TrainingDiverged
from jaxcifar.models import layers
from jaxcifar import xla_cache
from jaxcifar.speedrun import measure, model_file, net, optimizer, tta, whitening
from jaxcifar.speedrun.recipe import Plan, Recipe, plan, sgd_rates
from jaxcifar.speedrun import train as speedrun_train
from jaxcifar.speedrun.train import Speedrun, lookahead
from data_files import rewrite_msgpack

TRAIN, TEST, BATCH, EPOCHS = 64, 50, 32, 4
WIDTHS = (16, 32, 32)
TINY = Recipe(epochs=EPOCHS, batch_size=BATCH, widths=WIDTHS, dtype="float32")


# Standardised-looking inputs: smooth images (neighbouring pixels correlate, as in photos).
IMAGES = jax.image.resize(
    jax.random.normal(jax.random.key(1), (16, 8, 8, 3)), (16, 32, 32, 3), "linear"
)


def _init(widths=Recipe().widths):
    return jax.jit(net.init, static_argnames="widths")(jax.random.key(0), widths=widths)


def test_net_shapes_and_parameter_count():
    params, batch_stats = jax.eval_shape(_init)
    assert params["whiten"]["kernel"].shape == (2, 2, 3, 24)
    assert [params[f"block{i}"]["conv2"]["kernel"].shape for i in (1, 2, 3)] == [
        (3, 3, 64, 64), (3, 3, 256, 256), (3, 3, 256, 256)
    ]  # fmt: skip
    assert params["head"]["kernel"].shape == (256, 10)
    sizes = [math.prod(leaf.shape) for leaf in jax.tree.leaves(params)]
    # 288 + 24 whitening; 50,816 + 737,792 + 1,180,160 in the blocks (convs, BN biases); 2,560 head
    assert sum(sizes) == 1_971_640
    assert jax.tree.structure(batch_stats) == jax.tree.structure(
        {f"block{i}": {n: {"mean": 0, "var": 0} for n in ("norm1", "norm2")} for i in (1, 2, 3)}
    )
    images = jax.ShapeDtypeStruct((8, 32, 32, 3), jnp.float32)
    for train in (True, False):
        logits, stats = jax.eval_shape(
            lambda p, s, x: net.apply(p, s, x, train=train, bn_momentum=0.6, output_scale=1 / 9,
                                      dtype=jnp.bfloat16),  # fmt: skip
            params, batch_stats, images,
        )  # fmt: skip
        assert (logits.shape, logits.dtype) == ((8, 10), jnp.float32)
        assert jax.tree.structure(stats) == jax.tree.structure(batch_stats)


def test_global_max_pool_sends_the_gradient_to_the_first_of_tied_maxima():
    x = jnp.array([[1.0, 3.0, 3.0], [0.0, 3.0, 2.0]]).reshape(1, 2, 3, 1)  # three tied maxima
    x = jnp.concatenate([x, -x], axis=-1)  # a second channel, whose maximum is 0 at (1, 0)
    pooled, vjp = jax.vjp(layers.global_max_pool, x)
    np.testing.assert_array_equal(pooled, [[3.0, 0.0]])
    (grad,) = vjp(jnp.array([[2.0, 5.0]]))
    expected = np.zeros((1, 2, 3, 2))
    expected[0, 0, 1, 0] = 2.0  # row-major first of the three 3s (torch's MaxPool2d picks it too)
    expected[0, 1, 0, 1] = 5.0
    np.testing.assert_array_equal(grad, expected)


def test_gelu_is_the_exact_form_in_value_and_gradient_and_keeps_low_precision_tails():
    x = jnp.linspace(-8.0, 8.0, 2001)
    reference = functools.partial(jax.nn.gelu, approximate=False)
    # Absolute 1e-6: below x = -5, 1 + erf(x) cancels to 0 in float32 where erfc does not.
    close = functools.partial(np.testing.assert_allclose, rtol=1e-6, atol=1e-6)
    close(net.gelu(x), reference(x))
    close(jax.vmap(jax.grad(net.gelu))(x), jax.vmap(jax.grad(reference))(x))
    for dtype in (jnp.bfloat16, jnp.float16):
        low = x.astype(dtype)
        y = net.gelu(low)
        assert y.dtype == dtype
        # One rounding from the float32 value, also near x = -3 where a half-precision
        # 1 + erf(x) would keep no correct digit.
        y32, exact = y.astype(jnp.float32), reference(low.astype(jnp.float32))
        close(y32, exact, rtol=float(jnp.finfo(dtype).eps))


def _reference_apply(params, batch_stats, images, *, train, bn_momentum, output_scale):
    """airbench94's forward pass in float32 from lax primitives: whitening conv + bias, GELU;
    per block conv1, 2x2 max pool, BN, GELU, conv2, BN, GELU (BN on the batch's statistics in
    training, moving the running ones; on the running ones otherwise); global max, head."""

    def conv(x, kernel, padding):
        return jax.lax.conv_general_dilated(
            x, kernel, (1, 1), padding, dimension_numbers=("NHWC", "HWIO", "NHWC"),
            precision=jax.lax.Precision.HIGHEST,
        )  # fmt: skip

    def norm(x, bias, stats):
        if train:
            mean, var, count = x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2)), x.size / x.shape[-1]
            stats = {"mean": bn_momentum * stats["mean"] + (1 - bn_momentum) * mean,
                     "var": bn_momentum * stats["var"]
                     + (1 - bn_momentum) * var * count / (count - 1)}  # fmt: skip
        else:
            mean, var = stats["mean"], stats["var"]
        return (x - mean) / jnp.sqrt(var + net.BN_EPS) + bias["bias"], stats

    gelu = functools.partial(jax.nn.gelu, approximate=False)
    x = gelu(conv(images, params["whiten"]["kernel"], "VALID") + params["whiten"]["bias"])
    new_stats = {}
    for name, stats in batch_stats.items():
        block = params[name]
        x = jax.lax.reduce_window(conv(x, block["conv1"]["kernel"], "SAME"), -jnp.inf,
                                  jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")  # fmt: skip
        x, norm1 = norm(x, block["norm1"], stats["norm1"])
        x, norm2 = norm(conv(gelu(x), block["conv2"]["kernel"], "SAME"), block["norm2"],
                        stats["norm2"])  # fmt: skip
        x, new_stats[name] = gelu(x), {"norm1": norm1, "norm2": norm2}
    return x.max(axis=(1, 2)) @ params["head"]["kernel"] * output_scale, new_stats


@pytest.mark.parametrize("train", [True, False])
def test_net_computes_airbench94s_forward_pass_and_running_statistics(train):
    params, batch_stats = _init(widths=(8, 16, 16))
    params["whiten"]["kernel"] = whitening.whitening_kernel(IMAGES)
    # Non-zero biases and running statistics away from their starting values, so that each
    # one shows where it is read.
    leaves, treedef = jax.tree.flatten((params, batch_stats))
    keys = jax.random.split(jax.random.key(3), len(leaves))
    params, batch_stats = jax.tree.unflatten(treedef, [
        leaf + 0.2 * jax.random.uniform(k, leaf.shape) if leaf.ndim == 1 else leaf
        for leaf, k in zip(leaves, keys, strict=True)
    ])  # fmt: skip
    kwargs = dict(train=train, bn_momentum=0.6, output_scale=0.5)
    apply = jax.jit(functools.partial(net.apply, **kwargs))
    logits, stats = apply(params, batch_stats, IMAGES[:4])
    want_logits, want_stats = jax.jit(functools.partial(_reference_apply, **kwargs))(
        params, batch_stats, IMAGES[:4]
    )
    scale = float(jnp.abs(want_logits).max())
    np.testing.assert_allclose(logits, want_logits, rtol=1e-4, atol=1e-4 * scale)
    jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-4, atol=1e-5),
                 stats, want_stats)  # fmt: skip


@pytest.mark.parametrize("dtype, tolerance", [("bfloat16", 0.03), ("float16", 0.005)])
def test_low_precision_logits_follow_float32(dtype, tolerance):
    params, batch_stats = _init(widths=(8, 16, 16))
    params["whiten"]["kernel"] = whitening.whitening_kernel(IMAGES)
    apply = jax.jit(net.apply, static_argnames=("train", "bn_momentum", "output_scale", "dtype"))
    kwargs = dict(train=True, bn_momentum=0.6, output_scale=1.0)
    exact, _ = apply(params, batch_stats, IMAGES, dtype=jnp.float32, **kwargs)
    low, _ = apply(params, batch_stats, IMAGES, dtype=jnp.dtype(dtype), **kwargs)
    assert low.dtype == jnp.float32
    error = float(jnp.abs(low - exact).max() / jnp.abs(exact).max())
    assert 0 < error < tolerance, error  # rounded, and not by much


@pytest.mark.parametrize("dtype, tolerance", [(jnp.float32, 1e-6), (jnp.bfloat16, 1e-2)])
def test_whitening_layer_off_the_cpu_is_its_convolution(monkeypatch, dtype, tolerance):
    # Off the CPU a sum of shifted images times the kernel's rows (so that XLA computes it
    # inside GELU's kernel), on the CPU the library convolution: the same layer.
    params = {"kernel": jax.random.normal(jax.random.key(0), (2, 2, 3, 24)),
              "bias": jax.random.normal(jax.random.key(1), (24,))}  # fmt: skip
    images = jax.random.normal(jax.random.key(2), (3, 8, 7, 3))
    on_cpu = net.whiten(params, images, dtype)
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    off_cpu = net.whiten(params, images, dtype)
    assert off_cpu.shape == on_cpu.shape == (3, 7, 6, 24) and off_cpu.dtype == dtype
    scale = float(jnp.abs(on_cpu.astype(jnp.float32)).max())
    np.testing.assert_allclose(off_cpu.astype(jnp.float32), on_cpu.astype(jnp.float32),
                               atol=tolerance * scale)  # fmt: skip


def test_block_convs_start_as_identity_on_their_first_channels():
    params, batch_stats = _init(widths=(8, 16, 16))
    first = params["block1"]["conv1"]["kernel"]  # 24 -> 8: all 8 filters copy channels 0..7
    np.testing.assert_array_equal(first[1, 1, :8, :8], np.eye(8))
    np.testing.assert_array_equal(first[1, 1, 8:], 0)
    second = params["block2"]["conv1"]["kernel"]  # 8 -> 16: the first 8 copy, the rest are random
    np.testing.assert_array_equal(second[..., :8].sum(axis=(0, 1)), np.eye(8))
    assert np.all(np.abs(second[..., 8:]) <= 1 / math.sqrt(9 * 8)) and np.any(second[..., 8:] != 0)
    assert float(jnp.abs(batch_stats["block3"]["norm2"]["var"] - 1).max()) == 0


def test_whitening_layer_whitens_patches():
    rng = np.random.default_rng(0)
    # Neighbouring pixels and channels strongly correlated, channels of different scales.
    noise = rng.normal(size=(20, 17, 17, 3)).cumsum(axis=2) * np.array([1.0, 3.0, 0.3])
    images = jnp.asarray(noise[:, :16, :16] + noise[:, 1:, 1:], jnp.float32)

    @jax.jit
    def whitened_moments(images):
        kernel = whitening.whitening_kernel(images, eps=1e-9)
        out = layers.conv({"kernel": kernel}, images, jnp.float32, padding="VALID").reshape(-1, 24)
        rows = whitening.patches(images, 2)
        return kernel, out.T @ out / out.shape[0], rows.T @ rows / rows.shape[0]

    kernel, moments, raw = map(np.asarray, whitened_moments(images))
    assert kernel.shape == (2, 2, 3, 24)
    np.testing.assert_allclose(moments[:12, :12], np.eye(12), atol=2e-3)
    np.testing.assert_allclose(kernel[..., 12:], -kernel[..., :12])
    assert np.abs(raw - np.eye(12)).max() > 1  # the raw patches are far from white


def test_shift_is_the_reflect_padded_crop():
    images = jnp.arange(2 * 5 * 6 * 1).reshape(2, 5, 6, 1)
    padded = np.pad(np.asarray(images), ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
    np.testing.assert_array_equal(augment.shift(images, -1, -1), padded[:, 0:5, 0:6])
    np.testing.assert_array_equal(augment.shift(images, 1, 1), padded[:, 2:7, 2:8])
    # Unequal shifts, so that rows and columns swapped show.
    padded2 = np.pad(np.asarray(images), ((0, 0), (2, 2), (2, 2), (0, 0)), mode="reflect")
    np.testing.assert_array_equal(augment.shift(images, 1, -2), padded2[:, 3:8, 0:6])
    mask = jnp.array([True, False])
    flipped = augment.flip_where(mask, images)
    np.testing.assert_array_equal(flipped[0], images[0, :, ::-1])
    np.testing.assert_array_equal(flipped[1], images[1])


def test_tta_of_a_flip_invariant_model_is_its_plain_output():
    images = jax.random.normal(jax.random.key(1), (4, 6, 6, 3))

    def column_sums(x):  # the same for an image and its mirror
        return x.sum(axis=(1, 2))

    for level in (0, 1):
        logits = jax.jit(tta.tta_logits, static_argnums=(0, 2))(column_sums, images, level)
        np.testing.assert_allclose(logits, column_sums(images), rtol=1e-6)


def test_tta_level_2_weights_six_views():
    images = np.random.default_rng(2).normal(size=(3, 6, 6, 2)).astype(np.float32)

    def top_left(x):
        return x[:, 0, 0, :]

    padded = np.pad(images, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
    up_left, down_right = padded[:, 0:6, 0:6], padded[:, 2:8, 2:8]
    expected = sum(
        weight * (top_left(view) + top_left(view[:, :, ::-1]))
        for weight, view in ((1 / 4, images), (1 / 8, up_left), (1 / 8, down_right))
    )
    assert sum(w for w, _ in tta.views(jnp.asarray(images), 2)) == pytest.approx(1.0)
    logits = jax.jit(tta.tta_logits, static_argnums=(0, 2))(top_left, jnp.asarray(images), 2)
    np.testing.assert_allclose(logits, expected, atol=1e-6)


def test_tta_level_2_translates_one_pixel_up_left_and_down_right():
    # A model reading every pixel (the top-left corner alone reads the same pixel in both
    # reflect-filled translations) tells the views apart.
    rng = np.random.default_rng(3)
    images = rng.normal(size=(2, 6, 6, 2)).astype(np.float32)
    weights = rng.normal(size=(6, 6, 2, 3)).astype(np.float32)

    def linear(x):
        return jnp.einsum("nhwc,hwck->nk", x, weights, precision=jax.lax.Precision.HIGHEST)

    padded = np.pad(images, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
    up_left, down_right = padded[:, :6, :6], padded[:, 2:, 2:]
    expected = sum(
        weight * (linear(view) + linear(view[:, :, ::-1]))
        for weight, view in ((1 / 4, images), (1 / 8, up_left), (1 / 8, down_right))
    )
    logits = jax.jit(tta.tta_logits, static_argnums=(0, 2))(linear, jnp.asarray(images), 2)
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)


def test_recipe_steps_rates_and_schedule_match_airbench94():
    recipe = Recipe()
    assert plan(recipe, 50_000) == Plan(48, 476, 10)
    assert plan(recipe, 50_000).epoch_steps(9) == 44
    # 25 * 2.2 and 45 * 4.4 are a hair above 55 and 198 in floating point: no extra step.
    assert plan(Recipe(epochs=2.2), 25 * 1024) == Plan(25, 55, 3)
    assert plan(Recipe(epochs=4.4), 45 * 1024) == Plan(45, 198, 5)
    lr, lr_bias, decay = sgd_rates(recipe)
    kilostep = 1024 * (1 + 1 / 0.15)
    assert lr == pytest.approx(11.5 / kilostep) and lr_bias == pytest.approx(64 * lr)
    assert decay == pytest.approx(0.0153 * 1024 / kilostep)
    multiplier = optimizer.lr_multiplier(recipe, 476)
    values = [float(multiplier(s)) for s in (0, 109, 476)]
    np.testing.assert_allclose(values, [0.2, 1.0, 0.07], rtol=1e-6)
    # Every step's multiplier is the piecewise-linear schedule's, to float32 rounding (held
    # before the start and past the end), with no loop: jnp.interp's searchsorted added two
    # while loops to each step's program (a host-launched loop each on a GPU).
    for recipe, total in ((recipe, 476), (Recipe(lr_start=0.9, lr_peak=0.5, lr_end=0.0), 7)):
        steps = np.arange(-2, total + 3)
        peak = max(int(recipe.lr_peak * total), 1)
        expected = np.interp(steps, [0, peak, total], [recipe.lr_start, 1.0, recipe.lr_end])
        multiplier = optimizer.lr_multiplier(recipe, total)
        np.testing.assert_allclose(multiplier(steps), expected, rtol=0, atol=1e-7)
        assert " while(" not in jax.jit(multiplier).lower(jnp.int32(3)).compile().as_text()
    with pytest.raises(ConfigError, match="--batch-size 1024 is larger than the training set"):
        plan(recipe, 1000)
    for epochs in (1e300, 1e308):  # an infinite ceil; a Python loop of 1e300 epochs
        with pytest.raises(ConfigError, match=re.escape(f"--epochs {epochs} of 1 step each make ")):
            plan(dataclasses.replace(recipe, epochs=epochs), 1024)
    with pytest.raises(ConfigError, match="momentum must be in"):
        Recipe(momentum=1.0)


@pytest.mark.parametrize(
    "field, bad, good",
    [
        ("batch_size", 1, 2),  # batch norm needs two images
        ("label_smoothing", 1.0, 0.0),
        ("lr_peak", 1.0, 0.5),
        ("widths", (16, 0), (1,)),
        ("tta_level", 3, 0),
        ("translate", -1, 0),
        ("whiten_images", 0, 1),
        ("lookahead_every", 0, 1),
    ],
)
def test_recipe_refuses_each_out_of_range_setting_and_takes_the_edge_of_its_range(field, bad, good):
    with pytest.raises(ConfigError, match=field):
        Recipe(**{field: bad})
    assert getattr(Recipe(**{field: good}), field) == good


@pytest.mark.filterwarnings("ignore:.*before the first lookahead update")  # a few steps
def test_plan_takes_a_batch_of_the_whole_training_set_and_counts_only_epochs_with_steps():
    assert plan(Recipe(batch_size=64, epochs=3), 64) == Plan(1, 3, 3)
    # 3 + 1e-9 epochs round to 3 * 4 steps: no fourth epoch of no steps.
    assert plan(Recipe(batch_size=64, epochs=3 + 1e-9), 4 * 64) == Plan(4, 12, 3)


@pytest.mark.filterwarnings("ignore:.*before the first lookahead update")  # a few steps
def test_epochs_that_round_to_no_step_are_refused():
    # 1e-9 of 8 steps: no step would run, and the run failed deep inside the training.
    assert plan(Recipe(batch_size=8, epochs=0.125), 64) == Plan(8, 1, 1)
    with pytest.raises(ConfigError) as caught:
        plan(Recipe(batch_size=8, epochs=1e-9), 64)
    assert str(caught.value) == (
        "epochs 1e-09 of 8 steps each round to no step; train at least 0.125 epochs"
    )


def test_epochs_that_end_before_the_first_lookahead_update_are_warned_of():
    # The last step sets the weights to the lookahead average: before its first update, that
    # is the initial weights, and such a run scored chance without a word.
    with pytest.warns(UserWarning) as warned:
        assert plan(Recipe(batch_size=8, epochs=0.5), 64) == Plan(8, 4, 1)
    assert [str(w.message) for w in warned] == [
        "4 training steps end before the first lookahead update (every 5 steps), so the run "
        "ends on its initial weights, as airbench's would; train at least 0.625 epochs "
        "(--epochs)"
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert plan(Recipe(batch_size=8, epochs=0.625), 64) == Plan(8, 5, 1)


@pytest.mark.parametrize("offset, spike", [(0.0, 0.0), (10.0, 0.0), (1000.0, 0.0), (0.0, 1e4)])
def test_batch_norm_matches_float64_statistics(offset, spike):
    """Training-mode BN against NumPy in float64: output, its gradient, the running mean and
    the running variance (unbiased, as torch keeps it), with the batch's mean up to 2,000
    spreads from zero and with a first pixel 10,000 spreads out (the variance is E[d^2] -
    E[d]^2 in float32, d shifted by the first image's means: unshifted, 20 spreads cost
    3e-4 of it)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 5, 5, 3)) * [0.5, 1.0, 2.0] + offset
    x[0, 0, 0] += spike
    x = x.astype(np.float32)
    params = {"bias": jnp.array([0.1, -0.2, 0.3])}
    stats = {"mean": jnp.zeros(3), "var": jnp.ones(3)}
    y, new = net.batch_norm(params, stats, jnp.asarray(x), train=True, momentum=0.6)
    x64 = x.astype(np.float64)
    mean, var = x64.mean(axis=(0, 1, 2)), x64.var(axis=(0, 1, 2))
    normed = (x64 - mean) / np.sqrt(var + net.BN_EPS)
    tolerance = 2e-5 * max(1.0, offset / 10)
    np.testing.assert_allclose(y, normed + [0.1, -0.2, 0.3], atol=tolerance)
    rtol = 1e-5 if spike else 1e-6  # float32 sums of 200 values, one of them 10,000
    np.testing.assert_allclose(new["mean"], 0.4 * mean, rtol=rtol, atol=1e-7)
    np.testing.assert_allclose(new["var"], 0.6 + 0.4 * var * 200 / 199, rtol=rtol)
    # d sum(y * w) / dx, w fixed weights: (w - mean(w) - normed * mean(w * normed)) / std.
    w = rng.normal(size=x.shape)
    grad = jax.grad(lambda x: (net.batch_norm(params, stats, x, train=True, momentum=0.6)[0]
                               * w).sum())(jnp.asarray(x))  # fmt: skip
    axes = (0, 1, 2)
    expected = (w - w.mean(axes) - normed * (w * normed).mean(axes)) / np.sqrt(var + net.BN_EPS)
    np.testing.assert_allclose(grad, expected, atol=1e-4 * np.abs(expected).max())


def test_optimizer_groups_freeze_the_whitening_kernel():
    params, _ = jax.eval_shape(_init)
    groups = optimizer.param_groups(params)
    assert groups["whiten"] == {"kernel": "frozen", "bias": "other"}
    assert groups["block2"]["norm1"]["bias"] == "norm_bias"
    assert groups["block2"]["conv1"]["kernel"] == groups["head"]["kernel"] == "other"


def test_loss_is_the_summed_label_smoothed_cross_entropy():
    logits = np.array([[2.0, -1.0, 0.5], [0.0, 3.0, -2.0]], np.float32)
    labels = np.array([2, 1])
    log_p = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    targets = np.eye(3)[labels] * (1 - 0.2) + 0.2 / 3
    expected = -(targets * log_p).sum()  # summed over the batch, not averaged
    assert float(optimizer.loss(logits, labels, 0.2)) == pytest.approx(expected, rel=1e-6)


def _randomised(params):
    """`params` with every weight drawn at random: a fresh net's whitening kernel (set from
    the data when a run starts) and head are zeros, so every input scores alike."""
    leaves, tree = jax.tree.flatten(params)
    # One draw cut into the leaves: a draw per leaf's shape compiles a program each (5 s).
    sizes = [leaf.size for leaf in leaves]
    draws = np.split(np.asarray(0.3 * jax.random.normal(jax.random.key(5), (sum(sizes),))),
                     np.cumsum(sizes)[:-1])  # fmt: skip
    return tree.unflatten(jnp.asarray(draw.reshape(leaf.shape), leaf.dtype)
                          for draw, leaf in zip(draws, leaves))  # fmt: skip


def test_training_loss_is_smoothed_by_the_recipes_label_smoothing():
    # Only `optimizer.loss` was tested: training on the unsmoothed loss passed every test.
    params, batch_stats = _init(WIDTHS)
    params = _randomised(params)
    labels = jnp.arange(len(IMAGES)) % 10
    for smoothing in (0.0, 0.2):
        recipe = dataclasses.replace(TINY, label_smoothing=smoothing)
        loss, _ = speedrun_train.batch_loss(recipe, params, batch_stats, IMAGES, labels)
        logits, _ = net.apply(params, batch_stats, IMAGES, train=True, bn_momentum=0.6,
                              output_scale=recipe.output_scale)  # fmt: skip
        assert float(loss) == pytest.approx(float(optimizer.loss(logits, labels, smoothing)),
                                            rel=1e-5)  # fmt: skip
    unsmoothed = optimizer.loss(logits, labels, 0.0)
    assert float(loss) != pytest.approx(float(unsmoothed), rel=1e-3)


def test_test_time_augmentation_is_the_recipes_level():
    # Only `tta.tta_logits` was tested: a run and a saved model scoring without TTA passed.
    params, batch_stats = _init(WIDTHS)
    params = _randomised(params)
    images = np.asarray(jax.random.randint(jax.random.key(2), (4, 32, 32, 3), 0, 256), np.uint8)
    mean, std = jnp.full(3, 0.5), jnp.full(3, 0.25)

    def plain(x):
        return net.apply(params, batch_stats, x, train=False, bn_momentum=0.6,
                         output_scale=TINY.output_scale)[0]  # fmt: skip

    standardised = (images / 255 - 0.5) / 0.25
    by_level = {}
    for level in (0, 1, 2):
        recipe = dataclasses.replace(TINY, tta_level=level)
        by_level[level] = speedrun_train.tta_logits(recipe, params, batch_stats, mean, std,
                                                    jnp.asarray(images))  # fmt: skip
        expected = tta.tta_logits(plain, jnp.asarray(standardised, jnp.float32), level)
        np.testing.assert_allclose(by_level[level], expected, rtol=1e-4, atol=1e-5)
    assert not np.allclose(by_level[0], by_level[2], atol=1e-4)
    assert not np.allclose(by_level[1], by_level[2], atol=1e-4)


def test_optimizer_is_torchs_nesterov_sgd_with_coupled_decay_per_group():
    recipe = Recipe(batch_size=8, widths=WIDTHS)
    total_steps = 10
    tx = optimizer.build_optimizer(recipe, total_steps)
    params = {"whiten": {"kernel": np.full(2, 0.5, np.float32), "bias": np.array([1.0, -2.0])},
              "block1": {"norm1": {"bias": np.array([0.3, 0.1])}}}  # fmt: skip
    params = jax.tree.map(lambda leaf: np.asarray(leaf, np.float32), params)
    grads = [jax.tree.map(lambda leaf: np.full_like(leaf, g), params) for g in (0.5, -1.0, 2.0)]
    state = tx.init(params)
    new = params
    for g in grads:
        updates, state = tx.update(g, state, new)
        new = optax.apply_updates(new, updates)
    lr, lr_bias, decay = sgd_rates(recipe)
    multiplier = optimizer.lr_multiplier(recipe, total_steps)

    def torch_sgd(w, group_lr):  # g += (decay / lr_g) w; v = mu v + g; w -= lr_g m (g + mu v)
        w, v = np.asarray(w, np.float64), 0.0
        for step, g in enumerate((0.5, -1.0, 2.0)):
            g = g + decay / group_lr * w
            v = recipe.momentum * v + g
            w = w - group_lr * float(multiplier(step)) * (g + recipe.momentum * v)
        return w

    np.testing.assert_array_equal(new["whiten"]["kernel"], params["whiten"]["kernel"])
    # The moves compared, not the weights: weight decay is ~1% of a move of ~0.005.
    for group_lr, path in ((lr, ("whiten", "bias")), (lr_bias, ("block1", "norm1", "bias"))):
        w, w0 = functools.reduce(dict.get, path, new), functools.reduce(dict.get, path, params)
        np.testing.assert_allclose(w - w0, torch_sgd(w0, group_lr) - w0, rtol=1e-4)


def test_lookahead_averages_every_fifth_step_and_ends_on_the_average():
    recipe = Recipe(lookahead_every=5)
    steps = Plan(steps_per_epoch=6, total_steps=32, epochs=6)
    step = jax.jit(lambda s, w, e: lookahead(recipe, steps, s, {"w": w}, {"w": e}))

    def after(s, w, e):
        new_w, new_e = step(jnp.int32(s), jnp.float32(w), jnp.float32(e))
        return float(new_w["w"]), float(new_e["w"])

    assert after(4, 4.0, 1.0) == (4.0, 1.0)  # not a lookahead step
    early = 1.0 + (1 - 0.95**5 * (5 / 32) ** 3) * (4.0 - 1.0)  # decay ~0.003: nearly a copy
    assert after(5, 4.0, 1.0) == pytest.approx((early, early))
    moved = 4.0 + (1 - 0.95**5 * (30 / 32) ** 3) * (8.0 - 4.0)
    assert after(30, 8.0, 4.0) == pytest.approx((moved, moved))
    assert after(31, 9.0, moved) == pytest.approx((9.0, moved))  # neither
    assert after(32, 9.0, moved) == pytest.approx((moved, moved))  # the last step: the EMA


def test_batches_flip_each_image_one_way_in_even_epochs_the_other_in_odd_and_translate():
    recipe = Recipe(batch_size=8, widths=WIDTHS, translate=2)
    # Every pixel of an image distinct, so an output is one (shift, flip) view of it at most.
    images = (np.arange(16)[:, None] * 7 + np.arange(100)).astype(np.uint8).reshape(16, 10, 10, 1)
    data = speedrun_train.DeviceData(images, jnp.arange(16), jnp.zeros(1), jnp.ones(1))
    tx = optimizer.build_optimizer(recipe, 10)
    state = speedrun_train.init_state(recipe, tx, 10, jax.random.key(0), data)
    order = jnp.arange(16)[::-1]
    views = {}  # (dy, dx, mirrored) -> (16, 10, 10, 1)
    for dy, dx in itertools.product(range(-2, 3), repeat=2):
        views[dy, dx, False] = np.asarray(augment.shift(images, dy, dx))
        views[dy, dx, True] = np.asarray(augment.flip(views[dy, dx, False]))
    base_flip, drawn = np.asarray(state.base_flip), set()
    for epoch, index in itertools.product(range(2), range(2)):
        out, labels = speedrun_train.augmented_batch(
            recipe, state, data, order, jnp.int32(epoch), jnp.int32(index)
        )
        batch = np.asarray(order[index * 8 : (index + 1) * 8])
        np.testing.assert_array_equal(labels, batch)
        for image, label in zip(np.asarray(out), batch, strict=True):
            (view,) = [v for v, all_views in views.items()
                       if np.array_equal(all_views[label], image)]  # fmt: skip
            assert view[2] == bool(base_flip[label]) ^ (epoch == 1), (epoch, label)
            drawn.add(view)
    assert base_flip.any() and not base_flip.all()
    assert len({(dy, dx) for dy, dx, _ in drawn}) > 8  # 32 offsets drawn from 25


def one_step_setup(mean: float, std: float):
    """(recipe, plan, optimizer, data, initial state) for single float32 steps of batch 8 on
    IMAGES as uint8, standardised by `mean` and `std`."""
    recipe = Recipe(batch_size=8, widths=WIDTHS, dtype="float32")
    steps = Plan(steps_per_epoch=2, total_steps=20, epochs=10)
    tx = optimizer.build_optimizer(recipe, steps.total_steps)
    images = np.asarray(IMAGES * 40 + 128, np.uint8)
    data = speedrun_train.DeviceData(images, jnp.arange(16) % 10, jnp.full(3, mean),
                                     jnp.full(3, std))  # fmt: skip
    init = jax.jit(functools.partial(speedrun_train.init_state, recipe, tx, 10))  # as a run's
    return recipe, steps, tx, data, init(jax.random.key(0), data)


def test_a_step_moves_the_whitening_bias_only_while_it_trains():
    recipe, steps, tx, data, state = one_step_setup(128.0, 40.0)
    state = state._replace(params=speedrun_train._with_whiten_bias(state.params, jnp.ones(24)))
    order, epoch, index = jnp.arange(16), jnp.int32(0), jnp.int32(0)
    step = jax.jit(functools.partial(speedrun_train.train_step, recipe, steps, tx),
                   static_argnames="whiten_bias")  # fmt: skip
    (trained, loss), (frozen, frozen_loss) = (
        step(state, data, order, epoch, index, whiten_bias=trains) for trains in (True, False)
    )
    for new, whiten_bias in ((trained, True), (frozen, False)):
        moved = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), new.params, state.params)
        assert moved["whiten"]["bias"] == whiten_bias and moved["block1"]["conv1"]["kernel"]
        assert not moved["whiten"]["kernel"]
    # Everything else trains the same either way: the same loss and weights (within float
    # rounding: the two variants are two compiled programs, which XLA may fuse differently).
    np.testing.assert_allclose(loss, frozen_loss, rtol=1e-6)
    frozen.params["whiten"]["bias"] = trained.params["whiten"]["bias"]
    jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-6, atol=1e-8),
                 trained.params, frozen.params)  # fmt: skip


def test_a_step_takes_the_lookahead_at_its_own_count_of_steps():
    # The step that brings the count to a multiple of lookahead_every (the 5th, from a state
    # at 4) moves the EMA and sets the weights to it; the 1st leaves the EMA as it was.
    recipe, steps, tx, data, start = one_step_setup(0.5, 0.2)
    step = jax.jit(functools.partial(speedrun_train.train_step, recipe, steps, tx,
                                     whiten_bias=True))  # fmt: skip
    for count in (0, recipe.lookahead_every - 1):
        state = start._replace(step=jnp.int32(count))
        new, _ = step(state, data, jnp.arange(16), jnp.int32(0), jnp.int32(0))
        ema_moved = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), new.lookahead,
                                 state.lookahead)  # fmt: skip
        on_ema = jax.tree.map(lambda a, b: bool(jnp.all(a == b)), (new.params, new.batch_stats),
                              new.lookahead)  # fmt: skip
        lookahead_step = count + 1 == recipe.lookahead_every
        assert int(new.step) == count + 1
        assert any(jax.tree.leaves(ema_moved)) == lookahead_step, count
        assert all(jax.tree.leaves(on_ema)) == lookahead_step, count


@pytest.fixture(scope="module")
def xla_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("xla")


@pytest.fixture(scope="module")
def real_subsets(shared_data):
    """(TRAIN training, TEST test) CIFAR-10 images, seed 0's subsets."""
    return tuple(load("cifar10", split, data_dir=shared_data).subset(n, seed=0)
                 for split, n in (("train", TRAIN), ("test", TEST)))  # fmt: skip


@pytest.fixture(scope="module")
def tiny_run(real_subsets, xla_dir):
    """(Speedrun, two runs of seed 0) on 64 training / 50 test CIFAR-10 images."""
    train, test = real_subsets
    with xla_cache.compilation_cache(xla_dir):
        speedrun = Speedrun(TINY, train, test, epoch_mode="loop")
        return speedrun, speedrun.run(0), speedrun.run(0)


def test_fast_recipe_trains_on_real_data(tiny_run):
    speedrun, first, again = tiny_run
    assert speedrun.plan == Plan(2, 8, 4)
    assert first.state.params["block3"]["conv2"]["kernel"].shape == (3, 3, 32, 32)
    losses = first.epoch_losses
    assert len(losses) == EPOCHS and all(np.isfinite(losses))
    # Per image, from nearly uniform logits at first: about ln 10 for 10 classes.
    assert losses[0] == pytest.approx(math.log(10), rel=0.05)
    assert losses == sorted(losses, reverse=True) and losses[-1] < losses[0] - 0.01, losses
    assert first.epoch_losses == again.epoch_losses  # a run is a function of its seed
    # 8 steps on 64 images are not enough to beat chance on 50 test images (0.06 now): see
    # test_fast_recipe_beats_chance_on_real_data.
    assert first.tta_accuracy == again.tta_accuracy
    assert int(first.state.step) == 8
    np.testing.assert_array_equal(first.state.params["whiten"]["bias"] != 0, True)


def test_a_padded_last_test_batch_scores_each_test_image_once(
    tiny_run, real_subsets, xla_dir, monkeypatch
):
    # 50 test images in batches of 16: the last is padded with 14 zero images, whose
    # predictions must not be scored (the confusion matrix refuses 64 for 50 labels).
    monkeypatch.setattr(speedrun_train, "EVAL_BATCH", 16)
    with xla_cache.compilation_cache(xla_dir):
        speedrun = Speedrun(TINY, *real_subsets, epoch_mode="loop")
    assert speedrun.test_images.shape[:2] == (4, 16)
    assert speedrun.run(0).tta_accuracy == tiny_run[1].tta_accuracy


def test_a_run_whose_loss_is_not_finite_stops_naming_its_first_bad_step(real_subsets, xla_dir):
    # Constant training images have a channel standard deviation of 0, so every
    # standardised input is 0 / 0 and the first step's loss is NaN.
    train, test = real_subsets
    flat = dataclasses.replace(train, images=np.full_like(train.images, 128))
    with xla_cache.compilation_cache(xla_dir):
        speedrun = Speedrun(TINY, flat, test, epoch_mode="loop")
    with pytest.raises(TrainingDiverged, match=r"^speedrun seed 3: loss became nan at step 1$"):
        speedrun.run(3)


def test_a_run_whose_last_step_overflows_unseen_by_its_loss_is_reported_diverged(
    real_subsets, xla_dir
):
    # One step, whose weights the lookahead keeps: its loss comes from the weights before it,
    # and an lr of 1e20 overflows the test logits after it. The run once scored their NaNs as
    # class 0, a 10% "accuracy".
    recipe = dataclasses.replace(TINY, epochs=BATCH / TRAIN, lr=1e20, lookahead_every=1)
    with xla_cache.compilation_cache(xla_dir):
        speedrun = Speedrun(recipe, *real_subsets, epoch_mode="loop")
    with pytest.raises(TrainingDiverged, match=r"^speedrun seed 0: the test logits became "
                       r"non-finite after the last step, every step's loss finite$"):  # fmt: skip
        speedrun.run(0)


def test_fast_recipe_beats_chance_on_real_data(shared_data, xla_dir):
    # 64 steps of 128 on 2,048 images (~15 s here): 29.6% TTA accuracy on 500 test images
    # for seed 0 (31.6% for seed 1), where chance is 10% (a standard error is ~2 points).
    train = load("cifar10", "train", data_dir=shared_data).subset(2048, seed=0)
    test = load("cifar10", "test", data_dir=shared_data).subset(500, seed=0)
    recipe = Recipe(epochs=4, batch_size=128, widths=WIDTHS, dtype="float32")
    with xla_cache.compilation_cache(xla_dir):
        result = Speedrun(recipe, train, test, epoch_mode="loop").run(0)
    assert result.tta_accuracy > 0.2, result.tta_accuracy


@pytest.mark.filterwarnings("ignore:.*before the first lookahead update")  # a few steps
def test_scan_epochs_train_as_the_loop_does_with_a_partial_last_epoch(
    real_subsets, xla_dir, convolution_dim_labels
):
    # Scan epochs are what a GPU runs (`epoch_mode="auto"` there); the CPU suite otherwise
    # trains only the loop. 1.5 epochs of 2 steps: a 2-step scan program, then a 1-step one
    # in which the whitening bias no longer trains.
    recipe = Recipe(epochs=1.5, batch_size=BATCH, widths=WIDTHS, dtype="float32",
                    whiten_bias_epochs=1)  # fmt: skip
    train, test = real_subsets
    with xla_cache.compilation_cache(xla_dir):
        loop = Speedrun(recipe, train, test, epoch_mode="loop").run(1)
        speedrun = Speedrun(recipe, train, test, epoch_mode="scan")
        scan = speedrun.run(1)
    assert int(scan.state.step) == 3
    # Every convolution of the scan body in the form XLA:CPU runs on its library kernels.
    programs = speedrun._executables
    assert sorted(programs) == ["epoch1 frozen bias", "epoch2", "init", "predict"]
    # 7 convolutions, 3 each (forward, input and kernel gradients), less the whitening
    # layer's two (its input is data, its kernel frozen), and with its bias frozen too, less
    # block 1's first convolution's input gradient: nothing below it trains.
    for name, count in (("epoch2", 19), ("epoch1 frozen bias", 18)):
        labels = convolution_dim_labels(programs[name].as_text())
        assert len(labels) == count and set(labels) == {"b01f_01io->b01f"}, labels
    assert scan.epoch_losses == pytest.approx(loop.epoch_losses, rel=1e-6)
    assert scan.tta_accuracy == loop.tta_accuracy
    # The scanned step fuses differently: the same sums in another order (~1e-6 apart).
    for got, want in zip(jax.tree.leaves(scan.state), jax.tree.leaves(loop.state), strict=True):
        if jnp.issubdtype(got.dtype, jnp.floating):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_compile_seconds_count_each_program_once_and_a_run_compiles_nothing(
    real_subsets, xla_dir, monkeypatch, caplog
):
    timed, keywords = [], []

    def recorded(*args, **options):
        timed.append(compile_timed(*args, **options))
        keywords.append(options)
        return timed[-1]

    monkeypatch.setattr(speedrun_train, "compile_timed", recorded)
    train, test = real_subsets
    jax.clear_caches()  # a fresh process's first run: nothing compiled by earlier tests
    with xla_cache.compilation_cache(xla_dir):
        speedrun = Speedrun(TINY, train, test, epoch_mode="loop")
        # A TimedCompile's compile_seconds already holds its lowering.
        assert speedrun.compile_seconds == sum(c.compile_seconds for c in timed)
        assert speedrun.compile_seconds < sum(c.lower_seconds + c.compile_seconds for c in timed)
        with jax.log_compiles(True), caplog.at_level("WARNING", logger="jax"):
            speedrun.run(1)  # its time is warm: every program it calls compiled already
    assert not [r.getMessage() for r in caplog.records if "Compiling" in r.getMessage()]
    # Each rounds to the compute dtype where it says (no excess precision: fewer bytes on GPUs).
    assert keywords == [{"options": speedrun_train.XLA_OPTIONS}] * len(timed) and len(timed) == 5


def test_test_images_are_batched_with_zero_padding_and_none_are_refused():
    images = np.arange(5, dtype=np.uint8).reshape(5, 1, 1, 1) + 1
    out = speedrun_train.batched(images, 2)
    assert out.shape == (3, 2, 1, 1, 1)
    np.testing.assert_array_equal(out.reshape(-1), [1, 2, 3, 4, 5, 0])
    assert speedrun_train.batched(images, 2000).shape == (1, 5, 1, 1, 1)  # one batch of all
    # It divided by zero (a ZeroDivisionError from model_file.predictions on no images).
    with pytest.raises(DataError, match="no images to predict"):
        speedrun_train.batched(images[:0], 2000)


def test_saved_model_predictions_compile_as_training_does(
    tmp_path, monkeypatch, convolution_dim_labels, save_speedrun_model
):
    path = save_speedrun_model(tmp_path)
    compiled = []
    compile_program = compiling.compile_program

    def recorded(lowered, options):
        assert options == speedrun_train.XLA_OPTIONS  # as the training run compiles
        compiled.append(compile_program(lowered, options))
        return compiled[-1]

    monkeypatch.setattr(compiling, "compile_program", recorded)
    images = np.asarray(IMAGES[:3] * 40 + 128, np.uint8)
    predicted = model_file.predictions(model_file.load(path), images)
    assert predicted.shape == (3,) and len(compiled) == 1
    labels = convolution_dim_labels(compiled[0].as_text())
    assert labels and set(labels) == {"b01f_01io->b01f"}, labels


def tiny_speedrun_command(shared_data, xla_dir, out, runs: int, *flags: str) -> int:
    """`jaxcifar speedrun` of the tiny recipe (the `tiny_run` fixture's), float32, loop epochs,
    with `flags` added."""
    return cli.main([
        "speedrun", "--data-dir", str(shared_data), "--limit-train", str(TRAIN),
        "--limit-test", str(TEST), "--batch-size", str(BATCH), "--epochs", str(EPOCHS),
        "--widths", *map(str, WIDTHS), "--dtype", "float32", "--epoch-mode", "loop",
        "--runs", str(runs), "--compile-cache", str(xla_dir), "--out", str(out), *flags,
    ])  # fmt: skip


def test_speedrun_command_writes_its_json_and_a_model_evaluate_and_predict_read(
    shared_data, xla_dir, tmp_path, capsys, tiny_run
):
    out = tmp_path / "out"
    assert tiny_speedrun_command(shared_data, xla_dir, out, runs=2) == 0
    results = json.loads((out / "speedrun.json").read_text())
    assert isinstance(results["device"], str) and results["device"]
    assert [sorted(row) for row in results["runs"]] == [
        ["cold_seconds", "dtype", "seed", "system", "train_seconds", "tta_test_accuracy"]
    ] * 2
    first, second = results["runs"]
    assert first["system"] == second["system"] == "jaxcifar-fast"
    assert first["dtype"] == second["dtype"] == "float32"
    assert first["cold_seconds"] >= first["train_seconds"] > 0 and second["cold_seconds"] is None
    # Same seed, same data, same programs: the command's first run is the fixture's.
    assert first["tta_test_accuracy"] == tiny_run[1].tta_accuracy
    assert results["train_images"] == TRAIN and results["plan"]["total_steps"] == 8
    assert results["epoch_mode"] == "loop"  # as --epoch-mode asked, not auto's scan
    table = (out / "speedrun.md").read_text()
    assert "| jaxcifar-fast | float32 | 2 |" in table
    assert any(xla_dir.iterdir())  # compiled programs were stored
    assert "run 2/2" in capsys.readouterr().out

    # The last run's model: evaluate gives its TTA accuracy again, predict ranks classes.
    data = ["--data-dir", str(shared_data)]
    evaluate = ["evaluate", "--checkpoint", str(out), *data, "--limit-test", str(TEST)]
    assert cli.main([*evaluate, "--out", str(tmp_path / "eval")]) == 0
    assert f"TTA accuracy {second['tta_test_accuracy']:.4f} on {TEST} examples" in (
        capsys.readouterr().out
    )
    report = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert report["test_accuracy"] == second["tta_test_accuracy"]
    assert report["config"]["model"] == "speedrun" and report["config"]["widths"] == list(WIDTHS)
    image = tmp_path / "image.png"
    Image.fromarray(np.asarray(load("cifar10", "test", data_dir=shared_data).images[0])).save(image)
    assert cli.main(["predict", "--checkpoint", str(out / "model.msgpack"), str(image)]) == 0
    ranked = capsys.readouterr().out.split(": ", 1)[1].split(", ")
    assert len(ranked) == 3 and all(name.split()[0] in CIFAR10_CLASSES for name in ranked)

    # An evaluation kept beside the model it evaluated goes when a new run replaces the model:
    # it stayed, and passed for the new model's.
    assert cli.main([*evaluate, "--out", str(out)]) == 0
    assert (out / "metrics.json").exists() and (out / "confusion_matrix.png").exists()
    assert tiny_speedrun_command(shared_data, xla_dir, out, 1, "--seed", "1") == 0
    assert sorted(path.name for path in out.iterdir()) == [
        "model.msgpack", "speedrun.json", "speedrun.md"
    ]


def test_speedrun_refuses_runs_whose_seeds_pass_the_seed_range(tmp_path, capsys):
    # Run 2 of --seed 2147483647 was seeded 2147483648, saved in its model: a seed that
    # --seed refuses, so the run could not be made again alone.
    argv = ["speedrun", "--seed", "2147483646", "--runs", "3", "--out", str(tmp_path / "out")]
    assert cli.main(argv) == 2
    assert capsys.readouterr().err == (
        "jaxcifar speedrun: error: --seed 2147483646 --runs 3: the runs' seeds "
        "SEED..SEED+RUNS-1 go past 2147483647; lower --seed to 2147483645 or less\n"
    )
    assert not (tmp_path / "out").exists()
    # The last seed exactly the largest is taken: the data dir is the next thing looked at.
    argv = ["speedrun", "--seed", "2147483646", "--runs", "2", "--data-dir",
            str(tmp_path / "none"), "--out", str(tmp_path / "out")]  # fmt: skip
    assert cli.main(argv) == 2
    assert f"data dir {tmp_path / 'none'} does not exist" in capsys.readouterr().err


def test_speedrun_refuses_an_out_holding_a_training_run(tmp_path, capsys):
    # Its model.msgpack beside the run's checkpoint made the folder one that evaluate refused
    # as ambiguous.
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "checkpoint.msgpack").write_bytes(b"a run's")
    assert cli.main(["speedrun", "--out", str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err == (
        f"jaxcifar speedrun: error: --out {tmp_path / 'run'} holds a training run "
        "(checkpoint.msgpack), whose reports this would replace; pick another --out\n"
    )
    assert [path.name for path in (tmp_path / "run").iterdir()] == ["checkpoint.msgpack"]


def test_evaluate_of_a_speedrun_model_reproduces_its_runs_number(
    shared_data, xla_dir, tmp_path, capsys, monkeypatch
):
    # Before: speedrun --seed 5 tested on seed 5's test subset, evaluate drew seed 0's, so the
    # same --limit-test gave another number; nothing recorded the seed, or which of the runs
    # model.msgpack holds.
    out = tmp_path / "out"
    assert tiny_speedrun_command(shared_data, xla_dir, out, 2, "--seed", "5") == 0
    printed = capsys.readouterr().out
    assert "run 2/2 (seed 6): " in printed
    assert "model.msgpack: the model of run 2/2 (seed 6)\n" in printed
    results = json.loads((out / "speedrun.json").read_text())
    assert [row["seed"] for row in results["runs"]] == [5, 6]
    assert results["model"] == {"file": "model.msgpack", "run": 2, "seed": 6}
    table = (out / "speedrun.md").read_text()
    assert "| 2 | jaxcifar-fast | 6 | float32 |" in table
    assert "model.msgpack: the model of run 2 (seed 6)." in table
    saved = model_file.load(out / model_file.FILENAME)
    assert (saved.seed, saved.subsets) == (6, model_file.Subsets(5, TRAIN, TEST))

    evaluate = ["evaluate", "--checkpoint", str(out), "--data-dir", str(shared_data)]
    assert cli.main([*evaluate, "--limit-test", str(TEST), "--out", str(tmp_path / "eval")]) == 0
    report = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert report["test_accuracy"] == results["runs"][1]["tta_test_accuracy"]
    tested = load_split("cifar10", "test", data_dir=shared_data, limit=TEST, seed=5)
    class_counts = np.bincount(tested.labels, minlength=10)
    np.testing.assert_array_equal(np.sum(report["confusion_matrix"], axis=1), class_counts)
    assert report["evaluated"] == {
        "checkpoint": str(out / model_file.FILENAME), "test_data": tested.source,
        "limit_test": TEST, "subset_seed": 5, "test_examples": TEST, "test_loss": None,
    }  # fmt: skip
    assert report["config"]["seed"] == 6
    assert report["config"]["subsets"] == {"seed": 5, "limit_train": TRAIN, "limit_test": TEST}
    # Without --limit-test, the run's own test subset too.
    assert cli.main(evaluate) == 0
    accuracy = results["runs"][1]["tta_test_accuracy"]
    assert f"TTA accuracy {accuracy:.4f} on {TEST} examples" in capsys.readouterr().out
    # Without --data-dir or $JAXCIFAR_DATA_DIR: the data the run recorded, not a download of
    # the official release (its JPEG copy's accuracy was then scored on other images).
    monkeypatch.delenv("JAXCIFAR_DATA_DIR", raising=False)
    monkeypatch.setattr("jaxcifar.data.download.fetch",
                        lambda *args: pytest.fail("went to download"))  # fmt: skip
    assert saved.train_data == {"source": os.path.abspath(tested.source)}
    assert cli.main(evaluate[:3]) == 0
    out, err = capsys.readouterr()
    assert f"TTA accuracy {accuracy:.4f} on {TEST} examples" in out
    assert err == (f"jaxcifar evaluate: note: no --data-dir given: testing on "
                   f"{os.path.abspath(tested.source)}, the data the speedrun model recorded it "
                   "was trained on\n")  # fmt: skip


def test_evaluate_draws_a_speedrun_models_test_subset_as_its_run_did():
    recorded = model_file.Subsets(seed=5, limit_train=64, limit_test=50)
    assert speedrun_test_subset(recorded, None) == EvalSubset(50, 5)
    assert speedrun_test_subset(recorded, 20) == EvalSubset(20, 5)
    assert speedrun_test_subset(recorded._replace(limit_test=None), None) == EvalSubset(None, 5)
    # A model saved before models recorded their subsets: speedrun's default seed.
    assert speedrun_test_subset(None, 20) == EvalSubset(20, 0)
    assert speedrun_test_subset(None, None) == EvalSubset(None, 0)


def test_a_speedrun_model_of_another_version_or_shape_is_refused_naming_the_file(
    tmp_path, save_speedrun_model
):
    save = functools.partial(save_speedrun_model, tmp_path)
    path = save(recipe=Recipe(widths=(8, 16, 16)))
    assert model_file.load(path).recipe.widths == (8, 16, 16)
    # Files written before models recorded their run's seed, subsets and training data load
    # without them.
    assert model_file.load(path)[-3:] == (None, None, None)
    subsets = model_file.Subsets(3, None, 100)
    path = save(recipe=Recipe(widths=(8, 16, 16)), seed=4, subsets=subsets, source="data")
    assert model_file.load(path)[-3:] == (4, subsets, {"source": os.path.abspath("data")})
    # A later record with more than the source, or none written out, loads (as checkpoints').
    for record in ({"source": "/data", "examples": 64}, None):
        rewrite_msgpack(path, lambda payload: payload.update(train_data=record))
        assert model_file.load(path).train_data == record
    path = save(recipe=Recipe(widths=(8, 16, 32)))
    with pytest.raises(CheckpointError, match=f"{path}: state array shapes or dtypes do not fit"):
        model_file.load(path)
    half = jax.tree.map(lambda leaf: leaf.astype(jnp.float16), _init(widths=(8, 16, 16))[0])
    path = save(recipe=Recipe(widths=(8, 16, 16)), params=half)
    with pytest.raises(CheckpointError, match=f"{path}: state array shapes or dtypes do not fit"):
        model_file.load(path)  # a float16 file loaded as float16, before
    saved = shutil.copy(path, tmp_path / "half.msgpack")  # each edit is of the file as saved
    for field, value in (("widths", []), ("dtype", "float8")):  # a hand-edited recipe
        rewrite_msgpack(path, lambda payload: payload["recipe"].update({field: value}), saved)
        with pytest.raises(CheckpointError, match=f"{path}: malformed speedrun model .*{field}"):
            model_file.load(path)
    rewrite_msgpack(path, lambda payload: payload.update(version=2), saved)
    with pytest.raises(CheckpointError, match=f"{path}: speedrun model format version 2"):
        model_file.load(path)
    # A model of no pixels blamed the image predict was given; a limit of -1 failed in
    # load_split naming no file; None weights raised flax's AttributeError.
    path = save(recipe=Recipe(widths=(8, 16, 16)))
    saved = shutil.copy(path, tmp_path / "saved.msgpack")
    for field, value, problem in (
        ("input_shape", [0, 28, 1], "input_shape [0, 28, 1]; expected three positive integers"),
        ("subsets", {"seed": 3, "limit_train": None, "limit_test": -1},
         "expected an integer seed and positive limits"),
        ("train_data", {"source": 3}, "train_data {'source': 3}; expected {'source': a path, "),
        ("train_data", "data", "train_data 'data'; expected {'source': a path, ...}"),
        ("params", None, "state does not fit this model"),
    ):  # fmt: skip
        rewrite_msgpack(path, lambda payload: payload.update({field: value}), saved)
        with pytest.raises(CheckpointError, match=f"^{path}: .*{re.escape(problem)}"):
            model_file.load(path)
    with pytest.raises(ConfigError, match=r"widths must be one or more channel counts in "
                       r"1\.\.65536, got \(8, 65537\)"):  # fmt: skip
        Recipe(widths=(8, 65537))


def test_speedrun_command_saves_each_run_as_it_ends(
    shared_data, xla_dir, tmp_path, monkeypatch, capsys
):
    finish = speedrun_train.Speedrun.run
    calls = []

    def stopped_in_the_second_run(self, seed):
        calls.append(seed)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # a time limit, or Ctrl-C (SIGINT)
            time.sleep(5)  # not to its end: the handler raises within it
        return finish(self, seed)

    monkeypatch.setattr(speedrun_train.Speedrun, "run", stopped_in_the_second_run)
    out = tmp_path / "out"
    assert tiny_speedrun_command(shared_data, xla_dir, out, runs=3) == 143 and calls == [0, 1]
    assert capsys.readouterr().err == (
        f"jaxcifar speedrun: interrupted by SIGTERM; {out / 'speedrun.json'} keeps the 1 of 3 "
        "runs that finished\n"
    )
    saved = json.loads((out / "speedrun.json").read_text())
    runs = saved["runs"]
    assert [(run["system"], run["dtype"]) for run in runs] == [("jaxcifar-fast", "float32")]
    # The model file holds the run whose row is the last: they are written as a pair.
    assert saved["model"] == {"file": "model.msgpack", "run": 1, "seed": 0}
    assert model_file.load(out / "model.msgpack").seed == runs[-1]["seed"] == 0
    table = (out / "speedrun.md").read_text()
    assert "| jaxcifar-fast | float32 | 1 |" in table
    # It read as a finished set of one run, its first timed as warm though no warm-up ran.
    assert saved["runs_planned"] == 3 and saved["warmup"] is False
    assert table.endswith("\nInterrupted: 1 of the 3 runs asked for finished.\n")
    assert "train s: seconds per run, compilation excluded (without a warm-up run: the first " \
        "is its programs' first execution)" in table


def test_speedrun_command_stopped_while_loading_its_data_says_nothing_is_saved(
    tmp_path, monkeypatch, capsys
):
    def interrupted_load(*args, **kwargs):  # the first decode of the JPEGs takes ~20 s
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(5)  # not to its end: the handler raises within it

    monkeypatch.setattr("jaxcifar.data.load_split", interrupted_load)
    assert cli.main(["speedrun", "--out", str(tmp_path / "out")]) == 130
    assert capsys.readouterr().err == (
        "jaxcifar speedrun: interrupted by SIGINT; no run finished, so nothing is saved\n"
    )
    assert not (tmp_path / "out").exists()


def test_speedrun_command_rejects_a_batch_larger_than_the_data(shared_data, tmp_path, capsys):
    code = cli.main([
        "speedrun", "--data-dir", str(shared_data), "--limit-train", "100", "--limit-test", "10",
        "--compile-cache", "none", "--out", str(tmp_path),
    ])  # fmt: skip
    assert code == 2
    assert capsys.readouterr().err.strip() == (
        "jaxcifar speedrun: error: --batch-size 1024 is larger than the training set (100 "
        "images); lower --batch-size (or --limit-train less: a limit cuts the data, it adds "
        "none)"
    )
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("size", [28, 32])
def test_max_blocks_is_exactly_what_the_network_can_pool(size):
    # airbench's 3 blocks fit both sizes, a 4th leaves one pixel, a 5th none.
    fit = net.max_blocks(size, size)
    assert fit == 4

    def logits(blocks):
        params, batch_stats = net.init(jax.random.key(0), widths=(4,) * blocks, in_channels=1)
        return jax.eval_shape(functools.partial(
            net.apply, train=False, bn_momentum=0.6, output_scale=1.0
        ), params, batch_stats, jnp.zeros((2, size, size, 1)))  # fmt: skip

    assert logits(fit)[0].shape == (2, 10)
    with pytest.raises(ValueError, match="empty"):
        logits(fit + 1)


def test_speedrun_refuses_more_blocks_than_the_images_take(shared_data, tmp_path, capsys):
    # Before: "ValueError: attempt to get argmax of an empty sequence" from deep in tracing.
    code = cli.main([
        "speedrun", "--data-dir", str(shared_data), "--limit-train", "64", "--limit-test", "10",
        "--batch-size", "32", "--widths", "4", "4", "4", "4", "4", "--compile-cache", "none",
        "--out", str(tmp_path),
    ])  # fmt: skip
    assert code == 2
    assert capsys.readouterr().err == (
        "jaxcifar speedrun: error: --widths: 5 conv blocks do not fit images of (H, W) (32, 32); "
        "each block halves the image, so at most 4 fit: give at most 4 widths\n"
    )


def test_speedrun_refuses_images_too_small_for_any_block_as_data(recwarn):
    # Before: "--widths: 1 conv blocks do not fit ...: give at most 0 widths", which no
    # --widths can do, after a warning about the steps of a run that would never start.
    images = np.zeros((16, 2, 5, 3), np.uint8)
    tiny = Dataset(images, np.arange(16, dtype=np.int32) % 2, ("a", "b"), "tiny/")
    with pytest.raises(DataError, match=re.escape(
        "tiny/ holds images of (H, W) (2, 5): the speedrun net's whitening conv and first "
        "block's pooling need 3x3 or larger"
    )):  # fmt: skip
        Speedrun(Recipe(widths=(8,), batch_size=8, epochs=1), tiny, tiny)
    assert not recwarn.list
    assert net.max_blocks(3, 3) == 1  # the size the message names is the smallest that fits


def test_results_table_shows_no_sd_of_one_run_and_each_runs_seed():
    # Before: "1.000 ± 0.000" for a single run, as if its spread had been measured.
    row = measure.run_row(measure.SYSTEM, "float32", 1.0, 2.0, 0.9, seed=7)
    one = measure.render_markdown({"device": "cpu", "runs": [row]})
    assert "| jaxcifar-fast | float32 | 1 | 1.000 ± - | 2.00 | 0.9000 ± - |" in one
    assert "| 1 | jaxcifar-fast | 7 | float32 | 1.000 | 2.00 | 0.9000 |" in one
    again = measure.run_row(measure.SYSTEM, "float32", 3.0, None, 0.7, seed=8)
    two = measure.render_markdown({"device": "cpu", "runs": [row, again]})
    assert "| 2 | 2.000 ± 1.414 | 2.00 | 0.8000 ± 0.1414 |" in two
    del row["seed"]  # results written before rows recorded their seed
    assert "| 1 | jaxcifar-fast | - | float32 |" in measure.render_markdown(
        {"device": "cpu", "runs": [row]}
    )


def test_results_table_says_how_many_of_the_runs_asked_for_finished():
    row = measure.run_row(measure.SYSTEM, "float32", 1.0, 2.0, 0.9, seed=7)
    two = measure.render_markdown({"device": "cpu", "runs": [row, row], "runs_planned": 3})
    assert two.endswith("\nInterrupted: 2 of the 3 runs asked for finished.\n")
    three = measure.render_markdown({"device": "cpu", "runs": [row] * 3, "runs_planned": 3})
    assert "Interrupted" not in three


@pytest.mark.parametrize("warmup, timed", [
    (True, "train s: warm seconds per run ("),
    (False, "train s: seconds per run, compilation excluded (without a warm-up run: the first "
     "is its programs' first execution) ("),
    (None, "train s: seconds per run, compilation excluded ("),  # results that did not say
])  # fmt: skip
def test_results_table_calls_runs_warm_only_after_a_warm_up_run(warmup, timed):
    row = measure.run_row(measure.SYSTEM, "float32", 1.0, 2.0, 0.9, seed=7)
    results = {"device": "cpu", "runs": [row]} | ({} if warmup is None else {"warmup": warmup})
    assert timed in measure.render_markdown(results)


@pytest.mark.parametrize("warmup", [False, True])
def test_measure_times_every_run_and_counts_the_first_execution_as_cold(monkeypatch, warmup):
    class Timed:  # a Speedrun whose run from seed s takes s seconds
        compile_seconds, mode = 10.0, "scan"
        plan = Plan(2, 4, 2)

        def __init__(self, recipe, train_set, test_set, *, epoch_mode):
            self.seeds = []

        def run(self, seed):
            self.seeds.append(seed)
            return speedrun_train.RunResult(seed, float(seed), 0.5, [1.0, 0.5], None)

    monkeypatch.setattr(measure, "Speedrun", Timed)
    results = []
    rows, details = measure.measure(
        Recipe(), [0] * 8, [0] * 4, runs=2, seed=3, warmup=warmup, log=lambda line: None,
        on_result=lambda speedrun, result: results.append(speedrun.seeds[:]),
    )  # fmt: skip
    # The warm-up (seed 5, after the timed runs' 3 and 4) is run first and reported only as
    # the cold time; without it the first timed run is the cold one.
    assert [row["seed"] for row in rows] == [3, 4]
    assert [row["train_seconds"] for row in rows] == [3.0, 4.0]
    assert [row["cold_seconds"] for row in rows] == [10.0 + (5.0 if warmup else 3.0), None]
    assert results[-1] == ([5, 3, 4] if warmup else [3, 4])
    assert details["warmup"] is warmup
    assert details["epoch_mode"] == "scan"  # the mode that ran, not the "auto" asked for


def test_results_summarise_each_dtype_of_a_system_apart():
    rows = [measure.run_row(measure.SYSTEM, dtype, seconds, cold, accuracy)
            for dtype, seconds, cold, accuracy in (("bfloat16", 1.0, 5.0, 0.9),
                                                   ("float32", 4.0, 9.0, 0.6),
                                                   ("bfloat16", 2.0, None, 0.8))]  # fmt: skip
    summary = measure.summary(rows)
    assert [(s["dtype"], s["runs"], s["cold_seconds"]) for s in summary] == [
        ("bfloat16", 2, 5.0), ("float32", 1, 9.0)
    ]  # fmt: skip
    assert [s["train_seconds_mean"] for s in summary] == [1.5, 4.0]
    assert [s["tta_test_accuracy_mean"] for s in summary] == pytest.approx([0.85, 0.6])


def test_results_title_names_the_dataset_and_old_results_still_render():
    row = measure.run_row(measure.SYSTEM, "float32", 1.0, 2.0, 0.9)
    results = {"device": "cpu", "runs": [row], "dataset": "fashion_mnist"}
    assert measure.render_markdown(results).startswith("# Fashion-MNIST speedrun, cpu\n")
    del results["dataset"]  # written before results named their dataset
    assert measure.render_markdown(results).startswith("# CIFAR-10 speedrun, cpu\n")


def test_a_folder_with_a_speedrun_model_and_a_checkpoint_is_ambiguous(
    tmp_path, capsys, save_speedrun_model
):
    save_speedrun_model(tmp_path)
    assert model_file.find(tmp_path) == tmp_path / model_file.FILENAME
    (tmp_path / "checkpoint.msgpack").write_bytes(b"")  # a training run's output, too
    message = (
        f"--checkpoint {tmp_path} holds both a speedrun model (model.msgpack) and a training "
        f"checkpoint (checkpoint.msgpack); name the file: --checkpoint "
        f"{tmp_path / 'model.msgpack'} or {tmp_path / 'checkpoint.msgpack'}"
    )
    for argv in (["evaluate", "--checkpoint", str(tmp_path)],
                 ["predict", "--checkpoint", str(tmp_path), "image.png"]):  # fmt: skip
        assert cli.main(argv) == 2
        assert capsys.readouterr().err == f"jaxcifar {argv[0]}: error: {message}\n"
    # Naming the file is not ambiguous.
    assert model_file.find(tmp_path / model_file.FILENAME) == tmp_path / model_file.FILENAME


def test_an_unreadable_speedrun_model_is_named_not_taken_for_a_missing_checkpoint(
    tmp_path, capsys
):
    (tmp_path / model_file.FILENAME).write_bytes(b"\x00truncated")
    assert cli.main(["evaluate", "--checkpoint", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"jaxcifar evaluate: error: {tmp_path / model_file.FILENAME}: not a "
                          "readable speedrun model")  # fmt: skip
    copy = tmp_path / "copy.msgpack"  # another name: a speedrun model only by its format tag
    copy.write_bytes(b"\x00truncated")
    assert model_file.find(copy) is None


def test_predict_marks_an_image_with_any_non_finite_logit_minus_1(monkeypatch):
    logits = jnp.array([[0.0, 2.0, 1.0], [0.0, jnp.nan, 1.0], [0.0, jnp.inf, 1.0],
                        [-jnp.inf, 0.0, 1.0]])  # fmt: skip
    monkeypatch.setattr(speedrun_train, "tta_logits", lambda *args: logits)
    images = jnp.zeros((2, 4, 1, 1, 1), jnp.uint8)
    out = speedrun_train.predict(TINY, None, None, None, None, images)
    np.testing.assert_array_equal(out, [[1, -1, -1, -1]] * 2)


@pytest.mark.parametrize(("fill", "diverged"), [(0, False), (-1, True)])
def test_a_run_calls_only_a_minus_1_prediction_diverged(tiny_run, monkeypatch, fill, diverged):
    speedrun = tiny_run[0]

    def predict(params, batch_stats, mean, std, images):
        out = np.full(images.shape[:2], 3, np.int32)
        out.flat[1] = fill  # one image: class 0, or non-finite logits
        return out

    monkeypatch.setitem(speedrun._executables, "predict", predict)
    if diverged:
        with pytest.raises(TrainingDiverged, match="test logits became non-finite"):
            speedrun.run(0)
    else:
        expected = np.where(np.arange(TEST) == 1, 0, 3) == speedrun.test_labels
        assert speedrun.run(0).tta_accuracy == pytest.approx(expected.mean())
