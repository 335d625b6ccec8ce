import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcifar import models
from jaxcifar.models import cnn as cnn_module
from jaxcifar.models import layers
from jaxcifar.models import mlp as mlp_module


class Jitted:
    """A model module with `init` and `apply` jitted: eager op-by-op dispatch is slow on CPU."""

    def __init__(self, module, static_apply=("train", "dtype")):
        self.init = jax.jit(module.init, static_argnums=1)
        self.apply = jax.jit(module.apply, static_argnames=static_apply)


cnn = Jitted(cnn_module)
mlp = Jitted(mlp_module, static_apply=("train", "dtype", "activation"))


class FlaxCNN(nn.Module):
    """The seed CNN written with flax.linen, layer names matching jaxcifar.models.cnn."""

    @nn.compact
    def __call__(self, x):
        x = nn.max_pool(nn.relu(nn.Conv(32, (3, 3), padding=1, name="conv1")(x)), (2, 2), (2, 2))
        x = nn.max_pool(nn.relu(nn.Conv(16, (3, 3), padding=1, name="conv2")(x)), (2, 2), (2, 2))
        x = x.reshape(x.shape[0], -1)
        for i, width in enumerate((128, 64, 32, 16), start=1):
            x = nn.relu(nn.Dense(width, name=f"fc{i}")(x))
        return nn.Dense(10, name="fc5")(x)


@pytest.fixture(scope="module")
def cnn_params():
    return cnn.init(jax.random.key(0))


def test_cnn_matches_flax_linen_with_the_same_params(cnn_params):
    x = jax.random.uniform(jax.random.key(1), (3, 32, 32, 3), minval=-1, maxval=1)
    ours = cnn.apply(cnn_params, x)
    theirs = jax.jit(FlaxCNN().apply)({"params": cnn_params}, x)
    # The pytree is the one flax.linen builds for the same layer names.
    flax_shapes = jax.tree.map(
        jnp.shape, jax.eval_shape(FlaxCNN().init, jax.random.key(0), x)["params"]
    )
    assert jax.tree.map(jnp.shape, cnn_params) == flax_shapes
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "x_shape, kernel_shape, padding",
    [
        ((2, 9, 7, 3), (3, 3, 3, 8), "SAME"),  # odd, non-square: the padding must be exact
        ((2, 8, 8, 2), (5, 5, 2, 4), "SAME"),
        ((3, 8, 6, 2), (2, 2, 2, 3), "SAME"),  # even kernel: padding (0, 1)
        ((4, 8, 8, 3), (2, 2, 3, 24), "VALID"),  # the fast recipe's whitening conv
        ((2, 9, 9, 4), (3, 3, 4, 5), "VALID"),
    ],
)
def test_conv_and_its_gradients_equal_xlas_own(x_shape, kernel_shape, padding):
    k1, k2, k3 = jax.random.split(jax.random.key(2), 3)
    params = {
        "kernel": jax.random.normal(k1, kernel_shape),
        "bias": jax.random.normal(k2, kernel_shape[-1:]),
    }
    x = jax.random.normal(k3, x_shape)

    def ours(params, x, dtype):
        return layers.conv(params, x, dtype, padding=padding)

    def xlas(params, x, dtype):
        y = jax.lax.conv_general_dilated(
            x.astype(dtype), params["kernel"].astype(dtype), (1, 1), padding,
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )  # fmt: skip
        return y + params["bias"].astype(dtype)

    @jax.jit
    def value_and_grads(params, x):
        def loss(conv, dtype):
            return lambda p, x: jnp.sum(jnp.sin(conv(p, x, dtype).astype(jnp.float32)))

        return {
            (conv.__name__, dtype.__name__): jax.value_and_grad(loss(conv, dtype), (0, 1))(
                params, x
            )
            for conv in (ours, xlas)
            for dtype in (jnp.float32, jnp.bfloat16)
        }

    results = value_and_grads(params, x)
    for dtype, tolerance in (("float32", 1e-5), ("bfloat16", 0.02)):
        (value, grads), (xla_value, xla_grads) = results["ours", dtype], results["xlas", dtype]
        np.testing.assert_allclose(value, xla_value, rtol=tolerance)
        for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(xla_grads), strict=True):
            assert got.dtype == jnp.float32  # float32 parameters and inputs get float32 grads
            np.testing.assert_allclose(got, want, rtol=tolerance, atol=tolerance)


def test_conv_gradients_inside_a_loop_compile_to_library_convolutions(convolution_dim_labels):
    # XLA:CPU rewrites a convolution into the form its library kernels take only in a
    # program's entry computation (layers.conv): in a scan body JAX's own gradient
    # convolutions would compile to naive loops. Every convolution of a scanned training
    # step, forward and backward, must already be in that form, NHWC x HWIO -> NHWC.

    params = {"kernel": jnp.ones((3, 3, 32, 16)), "bias": jnp.zeros(16)}
    x = jnp.ones((4, 16, 16, 32))  # carried, so its gradient is live as well

    def step(carry, _):
        loss = lambda p, x: jnp.sum(layers.conv(p, x, jnp.float32) ** 2)  # noqa: E731
        grads = jax.grad(loss, (0, 1))(*carry)
        return jax.tree.map(lambda v, g: v - 0.1 * g, carry, grads), None

    scanned = jax.jit(lambda carry: jax.lax.scan(step, carry, length=3)[0])
    labels = convolution_dim_labels(scanned.lower((params, x)).compile().as_text())
    assert len(labels) == 3, labels  # forward, input gradient, kernel gradient
    assert set(labels) == {"b01f_01io->b01f"}, labels


def test_cnn_parameter_count_and_shapes(cnn_params):
    assert models.count_parameters(cnn_params) == 147_754
    assert cnn_params["conv1"]["kernel"].shape == (3, 3, 3, 32)
    assert cnn_params["fc1"]["kernel"].shape == (1024, 128)
    assert cnn_params["fc5"]["kernel"].shape == (16, 10)
    logits = cnn.apply(cnn_params, jnp.zeros((5, 32, 32, 3)))
    assert logits.shape == (5, 10) and logits.dtype == jnp.float32


def test_cnn_on_grayscale_28x28():
    params = cnn.init(jax.random.key(0), (28, 28, 1))
    assert params["fc1"]["kernel"].shape == (7 * 7 * 16, 128)
    assert cnn.apply(params, jnp.zeros((2, 28, 28, 1))).shape == (2, 10)


def test_init_is_pytorch_uniform_fan_in(cnn_params):
    # fan_in of fc1 is 1024, of conv1 3*3*3 = 27: every value inside +-1/sqrt(fan_in), spread
    # across it.
    for name, fan_in in (("fc1", 1024), ("conv1", 27)):
        bound = 1 / np.sqrt(fan_in)
        kernel = np.asarray(cnn_params[name]["kernel"])
        assert np.abs(kernel).max() <= bound
        assert np.abs(kernel).max() > 0.95 * bound
        assert np.abs(np.asarray(cnn_params[name]["bias"])).max() <= bound


def test_dropout_only_in_training(cnn_params):
    x = jax.random.uniform(jax.random.key(1), (4, 32, 32, 3), minval=-1, maxval=1)
    eval_a = cnn.apply(cnn_params, x)
    eval_b = cnn.apply(cnn_params, x, rng=jax.random.key(5))
    np.testing.assert_array_equal(eval_a, eval_b)
    train_a = cnn.apply(cnn_params, x, train=True, rng=jax.random.key(1))
    train_a2 = cnn.apply(cnn_params, x, train=True, rng=jax.random.key(1))
    train_b = cnn.apply(cnn_params, x, train=True, rng=jax.random.key(2))
    np.testing.assert_array_equal(train_a, train_a2)
    assert not np.allclose(train_a, train_b)
    assert not np.allclose(train_a, eval_a)
    with pytest.raises(ValueError, match="rng"):
        cnn.apply(cnn_params, x, train=True)


def test_dropout_zeroes_rate_of_units_independently_and_rescales_the_rest():
    x = jnp.full((64, 1024), 2.0)
    a = np.asarray(layers.dropout(x, 0.25, train=True, rng=jax.random.key(3))) != 0
    out_b = np.asarray(layers.dropout(x, 0.25, train=True, rng=jax.random.key(4)))
    b = out_b != 0
    # 65,536 Bernoulli(0.75) draws: the kept fraction near 0.75, in every row of 1,024 too,
    # and two keys' masks agree on 0.75^2 + 0.25^2 of the units; each bound ~6 standard
    # deviations (0.0017, 0.0135, 0.0019): a biased, repeating or shared mask fails.
    assert abs(a.mean() - 0.75) < 0.011
    assert np.all(np.abs(a.mean(axis=1) - 0.75) < 0.081)
    assert abs((a == b).mean() - 0.625) < 0.012
    np.testing.assert_array_equal(out_b[b], np.float32(2.0 / 0.75))
    bf16 = layers.dropout(x.astype(jnp.bfloat16), 0.25, train=True, rng=jax.random.key(3))
    assert bf16.dtype == jnp.bfloat16


def test_dropout_at_rate_zero_is_the_identity_even_in_training_without_a_key():
    # Nothing to drop, so no key is needed: unchecked, training at rate 0 demanded one.
    x = jnp.arange(6.0).reshape(2, 3)
    np.testing.assert_array_equal(layers.dropout(x, 0.0, train=True, rng=None), x)


def test_dropout_at_rate_zero_or_a_hair_above_keeps_every_unit():
    # (1 - rate) * 2**32 rounds to 2**32 there, one past uint32's largest: unclamped, the
    # mask's jnp.uint32(threshold) raised OverflowError.
    assert layers.dropout_threshold(0.0) == layers.dropout_threshold(1e-12) == 2**32 - 1
    assert bool(layers.dropout_keep(jax.random.key(0), (64, 1024), 0.0).all())


DROPOUT_ON_EIGHT_DEVICES = """
import os
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
import jax, jax.numpy as jnp, numpy as np
from jaxcifar import parallel
from jaxcifar.models import layers

def dropout(x, key):
    return layers.dropout(x, 0.25, train=True, rng=key)

x = jax.random.normal(jax.random.key(0), (16, 8, 8, 16))  # the seed CNN's, at batch 16
key = jax.random.key(3)
one = jax.jit(dropout)(x, key)
mesh = parallel.data_mesh()
sharded, replicated = parallel.batch_sharding(mesh), parallel.replicated_sharding(mesh)
eight = jax.jit(dropout, in_shardings=(sharded, replicated), out_shardings=sharded)(x, key)
assert mesh.size == 8 and len(eight.sharding.device_set) == 8
np.testing.assert_array_equal(np.asarray(eight), np.asarray(one))
"""


def test_dropout_mask_does_not_depend_on_the_device_count():
    # The mask's bits come from XLA's RngBitGenerator, which `jax_threefry_partitionable`
    # does not cover: a batch split over 8 devices must still draw the 1-device mask, or
    # data-parallel training would depend on the device count (`train.make_train_step`).
    env = {key: value for key, value in os.environ.items() if key != "XLA_FLAGS"}
    result = subprocess.run([sys.executable, "-c", DROPOUT_ON_EIGHT_DEVICES], env=env,
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]


def test_bfloat16_compute_keeps_float32_logits(cnn_params):
    x = jax.random.uniform(jax.random.key(1), (4, 32, 32, 3), minval=-1, maxval=1)
    low, exact = cnn.apply(cnn_params, x, dtype=jnp.bfloat16), cnn.apply(cnn_params, x)
    assert low.dtype == jnp.float32
    error = float(jnp.abs(low - exact).max() / jnp.abs(exact).max())
    assert 0 < error < 1e-2, error  # rounded, and not by much


def test_mlp_shapes_and_nhwc_flattening():
    params = mlp.init(jax.random.key(0))
    assert {k: v["kernel"].shape for k, v in params.items()} == {
        "dense1": (784, 500), "dense2": (500, 50), "dense3": (50, 10),
    }  # fmt: skip
    images = jax.random.uniform(jax.random.key(1), (3, 28, 28, 1))
    np.testing.assert_array_equal(
        mlp.apply(params, images), mlp.apply(params, images.reshape(3, 784))
    )
    relu = mlp.apply(params, images, activation="relu")
    assert relu.shape == (3, 10) and not np.allclose(relu, mlp.apply(params, images))


def test_build_binds_input_shape_and_classes():
    model = models.build("mlp", (32, 32, 3), 10, mlp_hidden=(64,), mlp_activation="relu")
    params = model.init(jax.random.key(0))
    assert params["dense1"]["kernel"].shape == (3072, 64)
    assert model.apply(params, jnp.zeros((2, 32, 32, 3))).shape == (2, 10)
    with pytest.raises(ValueError, match="unknown model 'vit'"):
        models.build("vit", (32, 32, 3), 10)


def test_mlp_gradient_equals_numpy_scratch_backprop():
    from jaxcifar import scratch

    rng = np.random.default_rng(0)
    network = scratch.initialize_network((20, 16, 8, 4), seed=3, dtype=np.float32)
    x = rng.uniform(0, 1, (6, 20)).astype(np.float32)
    y_onehot = scratch.one_hot(rng.integers(0, 4, 6), 4, dtype=np.float32)
    params = {
        f"dense{i}": {"kernel": layer["weights"], "bias": layer["bias"]}
        for i, layer in enumerate(network, start=1)
    }

    def loss(params):
        # The scratch network also squashes its output layer with the sigmoid.
        output = jax.nn.sigmoid(mlp_module.apply(params, x, activation="sigmoid"))
        return 0.5 * jnp.mean(jnp.sum((output - y_onehot) ** 2, axis=1))

    ours = jax.jit(jax.grad(loss))(params)
    assert float(jax.jit(loss)(params)) == pytest.approx(
        scratch.loss(network, x, y_onehot), rel=1e-5
    )
    for i, expected in enumerate(scratch.gradients(network, x, y_onehot), start=1):
        np.testing.assert_allclose(
            ours[f"dense{i}"]["kernel"], expected["weights"], rtol=1e-4, atol=1e-7
        )
        np.testing.assert_allclose(
            ours[f"dense{i}"]["bias"], expected["bias"], rtol=1e-4, atol=1e-7
        )


def test_max_pool_gradient_goes_to_the_first_maximum_of_each_window():
    # One 5x4 channel (an odd height: its last row is dropped). Window (0, 0) ties at 3 in
    # its first and last positions, window (0, 1) has one maximum, window (1, 0) ties
    # everywhere at 0 (a ReLU's flat region), window (1, 1) ties at 2 in its second and
    # third positions.
    x = jnp.array([
        [3.0, 1.0, 0.0, 2.0],
        [0.0, 3.0, -1.0, 5.0],
        [0.0, 0.0, 1.0, 2.0],
        [0.0, 0.0, 2.0, -4.0],
        [9.0, 9.0, 9.0, 9.0],
    ])[None, :, :, None]  # fmt: skip
    g = jnp.array([[10.0, 20.0], [30.0, 40.0]])[None, :, :, None]
    y, pool_vjp = jax.vjp(layers.max_pool_2x2, x)
    np.testing.assert_array_equal(y[0, :, :, 0], [[3.0, 5.0], [0.0, 2.0]])
    expected = np.zeros((5, 4))
    expected[0, 0], expected[1, 3], expected[2, 0], expected[2, 3] = 10.0, 20.0, 30.0, 40.0
    np.testing.assert_array_equal(pool_vjp(g)[0][0, :, :, 0], expected)


# An odd width (a dropped column), both sides odd, and an input large enough (8.5 MB) that
# the max and its phase come from one kernel of their own.
@pytest.mark.parametrize("shape", [(2, 6, 7, 3), (2, 7, 9, 3), (4, 64, 65, 128)])
def test_max_pool_gradient_equals_autodiff_where_there_are_no_ties(shape):
    n, height, width, channels = shape
    h2, w2 = height // 2, width // 2
    x = jax.random.normal(jax.random.key(0), shape)
    g = jax.random.normal(jax.random.key(1), (n, h2, w2, channels))

    def plain_max_pool(x):
        even = x[:, : 2 * h2, : 2 * w2]
        return even.reshape(n, h2, 2, w2, 2, channels).max(axis=(2, 4))

    y, pool_vjp = jax.vjp(layers.max_pool_2x2, x)
    np.testing.assert_array_equal(y, plain_max_pool(x))
    np.testing.assert_array_equal(pool_vjp(g)[0], jax.vjp(plain_max_pool, x)[1](g)[0])


def test_max_pool_window_with_a_nan_pools_to_nan_and_passes_no_gradient():
    x = jnp.array([[1.0, jnp.nan, 0.0, 2.0], [0.0, 3.0, 1.0, 1.0]])[None, :, :, None]
    y, pool_vjp = jax.vjp(layers.max_pool_2x2, x)
    assert np.isnan(y[0, 0, 0, 0]) and y[0, 0, 1, 0] == 2.0
    np.testing.assert_array_equal(
        pool_vjp(jnp.ones_like(y))[0][0, :, :, 0], [[0.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0]]
    )


def test_every_layers_parameters_are_their_own_draws():
    # Each layer takes the next slice of the one uniform draw: an offset left behind would give
    # every layer the same numbers.
    params = layers.init_layers(jax.random.key(0), {"a": (3, 4), "b": (3, 4), "c": (3, 4)})
    values = np.concatenate([np.ravel(leaf) for leaf in jax.tree.leaves(params)])
    assert values.size == 48 and len(np.unique(values)) == 48


def test_cnn_dropout_zeroes_a_quarter_of_the_features_and_scales_the_rest_by_four_thirds(
    cnn_params,
):
    features = jax.jit(cnn_module.features, static_argnames="train")
    x = jax.random.uniform(jax.random.key(1), (8, 32, 32, 3), minval=-1, maxval=1)
    plain = np.asarray(features(cnn_params, x))
    dropped = np.asarray(features(cnn_params, x, train=True, rng=jax.random.key(2)))
    live = plain != 0
    kept = dropped[live] != 0
    assert live.sum() > 2000 and not dropped[~live].any()
    assert abs(kept.mean() - 0.75) < 0.06  # ~6 standard deviations of 2,000+ Bernoulli draws
    np.testing.assert_allclose(dropped[live][kept], plain[live][kept] / 0.75, rtol=1e-6)


def test_cnn_num_classes_sizes_its_last_layer():
    params = jax.jit(cnn_module.init, static_argnums=(1, 2))(jax.random.key(0), (28, 28, 1), 3)
    assert params["fc5"]["kernel"].shape == (16, 3) and params["fc5"]["bias"].shape == (3,)
    assert cnn.apply(params, jnp.zeros((2, 28, 28, 1))).shape == (2, 3)


def test_dropped_shape_is_the_shape_features_drops_out_for_non_square_images(cnn_params):
    # The fused paths draw their dropout masks in this shape; height and width swapped would
    # mask the wrong units of non-square images.
    def conv_part(x):
        for name in cnn_module.CONV_LAYERS:
            x = layers.max_pool_2x2(jax.nn.relu(layers.conv(cnn_params[name], x, jnp.float32)))
        return x

    images = jax.ShapeDtypeStruct((2, 32, 20, 3), jnp.float32)
    assert cnn_module.dropped_shape(cnn_params, images.shape) == jax.eval_shape(
        conv_part, images
    ).shape == (2, 8, 5, 16)


def test_cnn_refuses_images_larger_than_its_params_were_made_for():
    params = cnn.init(jax.random.key(0), (28, 28, 3))
    with pytest.raises(ValueError, match="x holds 32x32 images, which give fc1 1024 inputs, but"):
        cnn_module.apply(params, jnp.zeros((2, 32, 32, 3)))


def test_mlp_takes_one_example_without_a_batch_axis():
    params = mlp.init(jax.random.key(0), (12, 5, 3))
    x = jax.random.uniform(jax.random.key(1), (4, 12))
    one = mlp_module.apply(params, x[0])
    assert one.shape == (3,)
    np.testing.assert_allclose(one, mlp_module.apply(params, x)[0], rtol=1e-6)


class FlaxMLP(nn.Module):
    """A sigmoid MLP of flax.linen Dense layers computing in `dtype`, names as mlp's."""

    widths: tuple[int, ...]
    dtype: jnp.dtype

    @nn.compact
    def __call__(self, x):
        *hidden, last = self.widths
        for i, width in enumerate(hidden, start=1):
            x = nn.sigmoid(nn.Dense(width, dtype=self.dtype, name=f"dense{i}")(x))
        return nn.Dense(last, dtype=self.dtype, name=f"dense{len(self.widths)}")(x)


def test_mlp_in_bfloat16_computes_every_layer_in_bfloat16_and_returns_float32():
    params = mlp.init(jax.random.key(0), (64, 32, 16, 10))
    x = jax.random.uniform(jax.random.key(1), (8, 64))
    ours = mlp_module.apply(params, x, dtype=jnp.bfloat16)  # op by op, as flax's below
    theirs = FlaxMLP((32, 16, 10), jnp.bfloat16).apply({"params": params}, x)
    assert ours.dtype == jnp.float32 and theirs.dtype == jnp.bfloat16
    np.testing.assert_allclose(ours, theirs.astype(jnp.float32), rtol=1e-6)


def test_build_makes_the_cnn_for_its_input_shape_and_classes():
    model = models.build("cnn", (28, 28, 1), 3)
    params = jax.jit(model.init)(jax.random.key(0))
    want = jax.jit(cnn_module.init, static_argnums=(1, 2))(jax.random.key(0), (28, 28, 1), 3)
    assert jax.tree.map(jnp.shape, params) == jax.tree.map(jnp.shape, want)
    assert jax.jit(model.apply)(params, jnp.zeros((2, 28, 28, 1))).shape == (2, 3)


def test_build_binds_the_mlps_activation_classes_and_default_hidden_layers():
    from jaxcifar.config import MLP_LAYER_SIZES

    model = models.build("mlp", (4, 4, 3), 5, mlp_hidden=(8,), mlp_activation="relu")
    params = model.init(jax.random.key(0))
    x = jax.random.uniform(jax.random.key(1), (2, 4, 4, 3))
    want = mlp.apply(params, x, activation="relu")
    assert want.shape == (2, 5)
    np.testing.assert_allclose(model.apply(params, x), want, rtol=1e-6)
    # By default the hidden layers are MLP_LAYER_SIZES' (784-500-50-10 for 28x28 greyscale).
    default = models.build("mlp", (28, 28, 1), 10).init(jax.random.key(0))
    shapes = [default[name]["kernel"].shape for name in sorted(default)]
    assert shapes == list(zip(MLP_LAYER_SIZES, MLP_LAYER_SIZES[1:]))
