import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcifar import models
from jaxcifar.models import cnn as cnn_module
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


@pytest.mark.parametrize("kernel_size, c_in", [(3, 3), (3, 1), (5, 2)])
def test_im2col_convolution_equals_lax_convolution_and_its_gradients(kernel_size, c_in):
    from jaxcifar.models import layers

    k1, k2, k3 = jax.random.split(jax.random.key(2), 3)
    params = {
        "kernel": jax.random.normal(k1, (kernel_size, kernel_size, c_in, 8)),
        "bias": jax.random.normal(k2, (8,)),
    }
    x = jax.random.normal(k3, (2, 9, 7, c_in))  # odd, non-square: the padding must be exact

    def loss(conv, params, x):
        return jnp.sum(jnp.sin(conv(params, x, jnp.float32)))

    lax_value, lax_grads = jax.value_and_grad(lambda p, x: loss(layers.conv, p, x), (0, 1))(params, x)
    value, grads = jax.value_and_grad(lambda p, x: loss(layers.im2col_same, p, x), (0, 1))(params, x)
    np.testing.assert_allclose(value, lax_value, rtol=1e-5)
    for ours, theirs in zip(jax.tree.leaves(grads), jax.tree.leaves(lax_grads), strict=True):
        np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "x_shape, kernel_shape, padding, group_rows",
    [
        ((6, 9, 7, 3), (3, 3, 3, 5), "SAME", 100),  # groups of 1 image: 6 groups
        ((6, 9, 7, 3), (3, 3, 3, 5), "SAME", 130),  # 2 images fit, 6 = 3 groups of 2
        ((5, 9, 7, 3), (3, 3, 3, 5), "SAME", 200),  # 3 fit, but 5 splits only into 5 of 1
        ((5, 8, 8, 4), (5, 5, 4, 2), "SAME", 10**6),  # one group of all 5
        ((4, 8, 6, 2), (2, 2, 2, 3), "SAME", 100),  # even kernel: padding (0, 1)
        ((4, 8, 8, 3), (2, 2, 3, 24), "VALID", 100),  # the whitening conv's shape
    ],
)
def test_kernel_gradient_by_taps_equals_xlas(monkeypatch, x_shape, kernel_shape, padding, group_rows):
    from jaxcifar.models import layers

    monkeypatch.setattr(layers, "TAPS_GROUP_ROWS", group_rows)
    k1, k2, k3 = jax.random.split(jax.random.key(3), 3)
    x = jax.random.normal(k1, x_shape)
    kernel = jax.random.normal(k2, kernel_shape)

    @jax.jit  # one compile each, rather than one per eager op
    def both(x, kernel, g):
        _, conv_vjp = jax.vjp(lambda k: layers._lax_conv(x, k, padding), kernel)
        return conv_vjp(g)[0], layers.kernel_gradient_by_taps(x, g, kernel_shape, padding)

    out_shape = jax.eval_shape(lambda x, k: layers._lax_conv(x, k, padding), x, kernel).shape
    expected, ours = both(x, kernel, jax.random.normal(k3, out_shape))
    assert ours.dtype == jnp.float32 and ours.shape == kernel_shape
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("padding", ["SAME", "VALID"])
def test_conv_with_the_taps_kernel_gradient_equals_lax_convolution(monkeypatch, padding):
    """The path `conv` takes for large inputs on CPU: same values, same gradients."""
    from jaxcifar.models import layers

    k1, k2, k3 = jax.random.split(jax.random.key(4), 3)
    params = {"kernel": jax.random.normal(k1, (3, 3, 4, 6)), "bias": jax.random.normal(k2, (6,))}
    x = jax.random.normal(k3, (3, 16, 15, 4))
    assert not layers.taps_kernel_gradient_pays(x)  # 11 KiB: XLA's path by default
    monkeypatch.setattr(layers, "TAPS_MIN_INPUT_BYTES", 0)
    assert layers.taps_kernel_gradient_pays(x)

    def loss(conv, params, x):
        return jnp.sum(jnp.sin(conv(params, x, jnp.float32, padding=padding)))

    def in_loop_conv(params, x, dtype, padding):
        return layers.conv(params, x, dtype, padding=padding, in_loop=True)

    def lax_conv(params, x, dtype, padding):
        return layers._lax_conv(x, params["kernel"], padding) + params["bias"]

    value_and_grad = jax.value_and_grad(lambda p, x: loss(in_loop_conv, p, x), (0, 1))
    value, grads = jax.jit(value_and_grad)(params, x)
    lax_value, lax_grads = jax.jit(jax.value_and_grad(lambda p, x: loss(lax_conv, p, x), (0, 1)))(
        params, x
    )
    np.testing.assert_allclose(value, lax_value, rtol=1e-6)
    for ours, theirs in zip(jax.tree.leaves(grads), jax.tree.leaves(lax_grads), strict=True):
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)

    def low_loss(kernel):  # bfloat16 compute, float32 parameters
        y = in_loop_conv({**params, "kernel": kernel}, x, jnp.bfloat16, padding)
        assert y.dtype == jnp.bfloat16
        return jnp.sum(jnp.sin(y.astype(jnp.float32)))

    low_grad = jax.jit(jax.grad(low_loss))(params["kernel"])
    monkeypatch.setattr(layers, "TAPS_MIN_INPUT_BYTES", 2**62)  # back to XLA's gradient
    lax_low_grad = jax.jit(jax.grad(low_loss))(params["kernel"])
    assert low_grad.dtype == jnp.float32
    np.testing.assert_allclose(low_grad, lax_low_grad, rtol=0.02, atol=0.02)


def test_matmul_forms_of_the_convolution_gradients_are_for_loop_bodies_only(monkeypatch):
    from jaxcifar.models import layers

    params = {"kernel": jnp.ones((3, 3, 3, 8)), "bias": jnp.zeros(8)}
    x = jnp.ones((2, 8, 8, 3))
    monkeypatch.setattr(layers, "TAPS_MIN_INPUT_BYTES", 0)

    def primitives(conv, x, **kwargs):
        jaxpr = jax.make_jaxpr(lambda x: conv(params, x, jnp.float32, **kwargs))(x)
        return {equation.primitive.name for equation in jaxpr.eqns}

    # conv1's im2col (3 input channels) in a loop body, XLA's convolution elsewhere.
    assert "conv_general_dilated" not in primitives(layers.conv_same, x, in_loop=True)
    assert "conv_general_dilated" in primitives(layers.conv_same, x)
    # The taps kernel gradient (a custom VJP) in a loop body only.
    wide = jnp.ones((2, 16, 16, 8))
    params = {"kernel": jnp.ones((3, 3, 8, 8)), "bias": jnp.zeros(8)}
    assert "custom_vjp_call" in primitives(layers.conv, wide, in_loop=True)
    assert "custom_vjp_call" not in primitives(layers.conv, wide)


def test_taps_kernel_gradient_is_for_large_inputs_only():
    from jaxcifar.models import layers

    def pays(shape):
        return layers.taps_kernel_gradient_pays(jax.ShapeDtypeStruct(shape, jnp.float32))

    assert pays((1024, 31, 31, 16))  # the fast recipe's first block conv: 60 MiB
    assert pays((512, 16, 16, 32))  # the seed CNN's conv2 at batch 512: 16 MiB
    assert not pays((128, 16, 16, 32))  # 4 MiB: XLA's kernel gradient is faster
    assert not pays((1024, 7, 7, 256))  # 49 MiB, but 7x7: XLA's is faster


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
    # fan_in of fc1 is 1024, of conv1 3*3*3 = 27: every value inside +-1/sqrt(fan_in), spread across it.
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


def test_bfloat16_compute_keeps_float32_logits(cnn_params):
    x = jax.random.uniform(jax.random.key(1), (4, 32, 32, 3), minval=-1, maxval=1)
    low = cnn.apply(cnn_params, x, dtype=jnp.bfloat16)
    assert low.dtype == jnp.float32
    np.testing.assert_allclose(low, cnn.apply(cnn_params, x), atol=0.05)


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
    assert float(jax.jit(loss)(params)) == pytest.approx(scratch.loss(network, x, y_onehot), rel=1e-5)
    for i, expected in enumerate(scratch.gradients(network, x, y_onehot), start=1):
        np.testing.assert_allclose(ours[f"dense{i}"]["kernel"], expected["weights"], rtol=1e-4, atol=1e-7)
        np.testing.assert_allclose(ours[f"dense{i}"]["bias"], expected["bias"], rtol=1e-4, atol=1e-7)


def test_max_pool_gradient_goes_to_the_first_maximum_of_each_window():
    from jaxcifar.models import layers

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


def test_max_pool_gradient_equals_autodiff_where_there_are_no_ties():
    from jaxcifar.models import layers

    x = jax.random.normal(jax.random.key(0), (2, 6, 7, 3))  # odd width: a dropped column
    g = jax.random.normal(jax.random.key(1), (2, 3, 3, 3))
    ours = jax.vjp(layers.max_pool_2x2, x)[1](g)[0]
    autodiff = jax.vjp(layers._max_pool_2x2, x)[1](g)[0]
    np.testing.assert_array_equal(ours, autodiff)
