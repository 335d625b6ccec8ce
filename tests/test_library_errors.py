"""The mistakes a Python user of the library makes, and what each gets: an error naming the
argument, what was found and what was expected, at the public function they called, rather
than a deep JAX/NumPy traceback or, worse, a result computed from the wrong inputs.
(The command line's own errors are tested with each command.)"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcifar import epochs, metrics, scratch, train
from jaxcifar.config import RunConfig
from jaxcifar.data import to_float
from jaxcifar.errors import ConfigError, DataError
from jaxcifar.models import cnn, mlp
from synthetic import tiny_dataset

RNG = np.random.default_rng(0)
PIXELS = RNG.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
IMAGES = to_float(PIXELS)
NCHW = "looks like NCHW images .*use x.transpose\\(0, 2, 3, 1\\)"


@pytest.fixture(scope="module")
def cnn_params():
    return cnn.init(jax.random.key(0))


@pytest.fixture(scope="module")
def mlp_params():
    return mlp.init(jax.random.key(0), (32 * 32 * 3, 8, 10))


# --- models: cnn.apply, mlp.apply, cnn.init -------------------------------------------------


def test_uint8_pixels_are_refused_not_read_as_0_to_255(cnn_params, mlp_params):
    # Both models used to return logits of the unscaled pixels without a word.
    for name, apply, params in (("cnn", cnn.apply, cnn_params), ("mlp", mlp.apply, mlp_params)):
        with pytest.raises(TypeError, match=f"{name}.apply: x is uint8; .*data.to_float"):
            apply(params, PIXELS)


def test_nchw_images_are_refused_with_the_transpose_that_fixes_them(cnn_params, mlp_params):
    nchw = IMAGES.transpose(0, 3, 1, 2)
    # The cnn failed inside conv_general_dilated ("32 // 1 != 3"); the mlp flattened the
    # NCHW batch to as many features as NHWC and silently returned logits of shuffled inputs.
    with pytest.raises(ValueError, match=f"cnn.apply: x \\(4, 3, 32, 32\\) {NCHW}"):
        cnn.apply(cnn_params, nchw)
    with pytest.raises(ValueError, match=f"mlp.apply: x \\(4, 3, 32, 32\\) {NCHW}"):
        mlp.apply(mlp_params, nchw)
    # Under jit the check runs when tracing: it needs only the shape.
    with pytest.raises(ValueError, match=NCHW):
        jax.jit(cnn.apply)(cnn_params, nchw)


def test_one_image_without_its_batch_axis_is_told_to_add_it(cnn_params, mlp_params):
    for apply, params in ((cnn.apply, cnn_params), (mlp.apply, mlp_params)):
        with pytest.raises(ValueError, match=r"x \(32, 32, 3\) \(one .*: add the batch axis"):
            apply(params, IMAGES[0])


def test_images_params_were_not_made_for_are_named(cnn_params, mlp_params):
    # These failed in dot_general: "contracting dimensions ... (784,) and (1024,)".
    with pytest.raises(ValueError, match="x holds 28x28 images, which give fc1 784 inputs, but p"):
        cnn.apply(cnn_params, jnp.zeros((2, 28, 28, 3)))
    with pytest.raises(ValueError, match=r"x \(2, 32, 32, 1\): expected NHWC images \(N, H, W, 3"):
        cnn.apply(cnn_params, jnp.zeros((2, 32, 32, 1)))
    with pytest.raises(ValueError, match=r"mlp.apply: x \(2, 28, 28, 1\): expected \(N, 3072\)"):
        mlp.apply(mlp_params, jnp.zeros((2, 28, 28, 1)))


def test_another_models_params_are_named_not_a_key_error(cnn_params, mlp_params):
    with pytest.raises(ValueError, match=r"cnn.apply: params have layers \('dense1', 'dense2'"):
        cnn.apply(mlp_params, IMAGES)
    with pytest.raises(ValueError, match=r"mlp.apply: params have layers \('conv1', .*another"):
        mlp.apply(cnn_params, IMAGES)
    with pytest.raises(ValueError, match=r"params have layers \('params',\).*'params' entry"):
        cnn.apply({"params": cnn_params}, IMAGES)  # flax's variables dict


def test_cnn_init_refuses_an_input_shape_in_pytorchs_order():
    # (3, 32, 32) read as H=3, W=32, C=32 gave fc1 a (0, 128) kernel without a word.
    with pytest.raises(ValueError, match=r"cnn.init: input_shape \(3, 32, 32\): expected \(H, W"):
        cnn.init(jax.random.key(0), (3, 32, 32))


def test_sizes_that_make_no_layer_are_refused_at_init():
    # (784, 0, 10) gave biases of +-inf, (784, -5, 10) an MLIRError, (784,) no layer at all,
    # and a class count of -1 a reshape error.
    for sizes, message in [((784, 0, 10), r"dense1 kernel \(784, 0\)"),
                           ((784, -5, 10), r"dense1 kernel \(784, -5\)"),
                           ((784, 2.5, 10), r"dense1 kernel \(784, 2.5\)")]:  # fmt: skip
        with pytest.raises(ValueError, match=f"^init: {message}; sizes must be positive integers"):
            mlp.init(jax.random.key(0), sizes)
    with pytest.raises(ValueError, match=r"^mlp.init: layer_sizes \(784,\); expected inputs"):
        mlp.init(jax.random.key(0), (784,))
    # The CNN's class count and input shape are named, not fc5's or fc1's kernel size.
    for num_classes in (-1, 0, 2.0):
        with pytest.raises(ValueError, match=r"^cnn.init: num_classes must be a positive "
                           f"integer; got {num_classes}$"):  # fmt: skip
            cnn.init(jax.random.key(0), num_classes=num_classes)
    for shape in ((32, 32, 0), (32.0, 32, 3)):
        with pytest.raises(ValueError, match=r"^cnn.init: input_shape \(.*\): expected \(H, W, "
                           r"C\), three positive integers with H, W >= 4"):  # fmt: skip
            cnn.init(jax.random.key(0), shape)
    assert mlp.init(jax.random.key(0), np.array([4, 3]))["dense1"]["kernel"].shape == (4, 3)


def test_an_integer_compute_dtype_or_an_unknown_activation_is_refused(cnn_params, mlp_params):
    # int32 cast every weight to 0: all-zero logits without a word.
    for apply, params, where in ((cnn.apply, cnn_params, "cnn"), (mlp.apply, mlp_params, "mlp")):
        with pytest.raises(TypeError, match=f"^{where}.apply: dtype int32; expected a floating"):
            apply(params, IMAGES, dtype=jnp.int32)
    with pytest.raises(ValueError, match="^mlp.apply: activation 'nope'; expected one of sigmoid"):
        mlp.apply(mlp_params, IMAGES, activation="nope")


def test_an_empty_batch_gives_empty_logits(cnn_params, mlp_params):
    # reshape(0, -1) used to fail: "integer modulo by zero".
    assert cnn.apply(cnn_params, IMAGES[:0]).shape == (0, 10)
    assert mlp.apply(mlp_params, IMAGES[:0]).shape == (0, 10)


# --- train: the jitted steps and fit ---------------------------------------------------------

CONFIG = RunConfig(model="mlp", dataset="mnist", mlp_hidden=(4,), batch_size=4, epochs=1)


@pytest.fixture(scope="module")
def step_and_state():
    setup = train.build_setup(CONFIG, tiny_dataset(8))
    return setup, train.init_state(CONFIG, setup)


def test_steps_refuse_images_already_scaled_to_float(step_and_state):
    # The steps scale uint8 pixels themselves: given to_float's output they scaled it again,
    # to about -1 everywhere, and trained and evaluated on that without a word.
    setup, state = step_and_state
    data = tiny_dataset(8)
    batch = (to_float(data.images[:4]), data.labels[:4])
    with pytest.raises(TypeError, match="train step: images are float32; expected uint8"):
        train.make_train_step(setup)(state, batch, jax.random.key(0))
    with pytest.raises(TypeError, match="eval step: images are float32; expected uint8"):
        train.make_eval_step(setup.model)(state.params, batch)


def test_steps_refuse_integer_images_other_than_uint8(step_and_state):
    # uint16 pixels (0..65535) were scaled as 0..255: inputs up to about 514, without a word.
    setup, state = step_and_state
    data = tiny_dataset(8)
    for dtype in (np.uint16, np.int32):
        batch = (data.images[:4].astype(dtype) * 257, data.labels[:4])
        message = f"images are {np.dtype(dtype)}; expected uint8 pixels, 0..255"
        with pytest.raises(TypeError, match=f"^train step: {message}"):
            train.make_train_step(setup)(state, batch, jax.random.key(0))
        with pytest.raises(TypeError, match=f"^eval step: {message}"):
            train.make_eval_step(setup.model)(state.params, batch)


@pytest.mark.parametrize(
    "labels, error, message",
    [
        (np.zeros((4, 1), np.int32), ValueError, r"labels \(4, 1\) for 4 images; expected \(4,\)"),
        (np.eye(3, dtype=np.float32)[[0, 1, 2, 0]], ValueError, r"labels \(4, 3\) .*not one-hot"),
        (np.zeros(3, np.int32), ValueError, r"labels \(3,\) for 4 images"),
        (np.zeros(4, np.float32), TypeError, "labels are float32; expected integer"),
    ],
)
def test_steps_name_labels_of_the_wrong_shape_or_dtype(step_and_state, labels, error, message):
    setup, state = step_and_state
    images = tiny_dataset(8).images[:4]
    with pytest.raises(error, match=f"train step: {message}"):
        train.make_train_step(setup)(state, (images, labels), jax.random.key(0))


@pytest.mark.parametrize("mode", ["auto", "Chunk", "fused"])
def test_an_epoch_runner_names_a_mode_it_does_not_run(step_and_state, mode):
    # It failed later with an AttributeError ('EpochRunner' object has no attribute
    # 'device_images'), far from the cause.
    setup, _ = step_and_state
    with pytest.raises(ConfigError, match=f"one of loop, chunk, scan here, got '{mode}'"):
        epochs.EpochRunner(train.make_train_step(setup), tiny_dataset(8), CONFIG, mode)


def test_fit_refuses_a_test_set_unlike_the_training_set():
    # Other images failed deep in the model after training; other classes evaluated
    # to a NaN loss (labels past the model's outputs) or chance accuracy, without a word.
    cases = [
        (tiny_dataset(8, size=6),
         r"test_set \(synthetic\) has image shape \(H, W, C\) \(6, 6, 1\), but "
         r"train_set \(synthetic\) \(8, 8, 1\): another dataset\?"),
        (tiny_dataset(8, classes=tuple("abcd")),
         r"test_set \(synthetic\) has classes \('a', 'b', 'c', 'd'\)"),
        (dataclasses.replace(tiny_dataset(8), class_names=tuple("xyz")), "another dataset"),
    ]
    for test_set, message in cases:
        with pytest.raises(DataError, match=message):
            train.fit(CONFIG, tiny_dataset(8), test_set, progress=False, log=lambda line: None)


def test_fit_takes_a_test_set_whose_class_names_are_a_list_of_the_same_names():
    train_set = tiny_dataset(8)
    test_set = dataclasses.replace(train_set, class_names=list(train_set.class_names))
    result = train.fit(CONFIG, train_set, test_set, progress=False, log=lambda line: None)
    assert len(result.history) == CONFIG.epochs


def test_scratch_takes_bfloat16_which_numpy_does_not_count_as_floating_and_keeps_it():
    import ml_dtypes

    network = scratch.initialize_network((4, 3, 2), dtype=ml_dtypes.bfloat16)
    x = np.random.default_rng(0).uniform(-1, 1, (5, 4)).astype(ml_dtypes.bfloat16)
    outputs = scratch.forward_propagation(network, x)[-1]
    assert outputs.shape == (5, 2) and outputs.dtype == ml_dtypes.bfloat16
    wide = [{name: np.asarray(value, np.float32) for name, value in layer.items()}
            for layer in network]  # fmt: skip
    exact = scratch.forward_propagation(wide, x.astype(np.float32))[-1]
    np.testing.assert_allclose(outputs.astype(np.float32), exact, atol=2e-2)
    trained, _ = scratch.train(network, x, np.array([0, 1, 0, 1, 1]), l_rate=0.5, n_epoch=2,
                               batch_size=2)  # fmt: skip
    assert {leaf.dtype for layer in trained for leaf in layer.values()} == {outputs.dtype}


# --- metrics.confusion_matrix ----------------------------------------------------------------


@pytest.mark.parametrize(
    "labels, predictions, message",
    [
        # Each of these was counted without a word: a (1,) array broadcast to every label, a
        # prediction of K counted as class 0 of the next row, floats truncated.
        ([0, 1, 2], [1], "3 labels but 1 predictions"),
        ([0, 1], [3, 0], r"predictions must lie in 0..2; found 0..3"),
        ([0.7, 1.0], [0, 0], r"labels \(2,\) float64; expected \(N,\) integer"),
        # These failed in NumPy: broadcasting, "object too deep", a reshape of 10 into (3, 3).
        ([0, 1, 2], [0, 1], "3 labels but 2 predictions"),
        ([[0], [1]], [0, 1], r"labels \(2, 1\) int64; expected \(N,\) integer class indices$"),
        ([3, 1], [0, 0], r"labels must lie in 0..2; found 1..3"),
        ([1, 1], [-1, 0], r"predictions must lie in 0..2; found -1..0"),  # counted as (0, 2)
        ([0, 1], np.eye(3)[[0, 1]], r"predictions \(2, 3\) .*: the argmax of logits"),
    ],
)
def test_confusion_matrix_refuses_what_it_would_miscount(labels, predictions, message):
    with pytest.raises(ValueError, match=f"confusion_matrix: {message}"):
        metrics.confusion_matrix(np.asarray(labels), np.asarray(predictions), 3)


def test_confusion_matrix_of_nothing_is_zeros_and_scores_zero():
    matrix = metrics.confusion_matrix([], [], 2)
    np.testing.assert_array_equal(matrix, np.zeros((2, 2)))
    assert metrics.accuracy(matrix) == 0.0  # not NaN, which JSON cannot hold


# --- scratch ---------------------------------------------------------------------------------


@pytest.fixture
def scratch_problem():
    network = scratch.initialize_network((12, 5, 3), seed=0)
    pixels = RNG.integers(0, 256, (6, 2, 2, 3), dtype=np.uint8)
    return network, pixels, scratch.scale_pixels(pixels), np.arange(6) % 3


def fit_scratch(network, x, y, **kwargs):
    return scratch.train(network, x, y, **{"l_rate": 0.5, "n_epoch": 1, "batch_size": 2, **kwargs})


def test_scratch_refuses_unscaled_or_unflattened_pixels(scratch_problem):
    network, pixels, x, y = scratch_problem
    # uint8 pixels were cast to 0..255 floats and trained on, saturating every sigmoid.
    with pytest.raises(TypeError, match=r"x is uint8; expected float inputs in \[0, 1\] .*scale"):
        fit_scratch(network, pixels.reshape(6, -1), y)
    # Images not flattened failed in matmul's gufunc signature, here and in predict.
    with pytest.raises(ValueError, match=r"x \(6, 2, 2, 3\) \(images: flatten.*\): expected \(B,"):
        fit_scratch(network, pixels / 255.0, y)
    with pytest.raises(ValueError, match=r"x_test \(6, 2, 2, 3\) \(images"):
        fit_scratch(network, x, y, x_test=pixels / 255.0, y_test=y)
    with pytest.raises(ValueError, match=r"x \(6, 2, 2, 3\) \(images"):
        scratch.predict(network, pixels / 255.0)
    with pytest.raises(ValueError, match=r"x \(12,\) \(one example: add the batch axis"):
        scratch.forward_propagation(network, x[0])


@pytest.mark.parametrize(
    "y, message",
    [
        (np.array([0, 1, 2, 0, 1, -1]),
         r"y must lie in 0..2; found -1..2 \(the network's 3 outputs\)"),
        (np.array([0, 1, 2, 0, 1, 3]), r"y must lie in 0..2"),
        ((np.arange(6) % 3)[:, None], r"y \(6, 1\) int64: expected \(6,\) integer class labels"),
        (np.eye(3)[np.arange(6) % 3], r"y \(6, 3\) float64: .*not one-hot"),
        (np.arange(8) % 3, r"y \(8,\) int64: expected \(6,\)"),
    ],
)
def test_scratch_train_names_bad_labels(scratch_problem, y, message):
    # A label of -1 trained as the last class, and labels longer than x were cut to its
    # length, without a word; the rest failed in one_hot's indexing.
    network, _, x, _ = scratch_problem
    with pytest.raises(ValueError, match=message):
        fit_scratch(network, x, y)


def test_scratch_scores_refuse_labels_that_would_broadcast(scratch_problem):
    # (N, 1) labels compared with (N,) predictions gave an N x N comparison's mean.
    network, _, x, y = scratch_problem
    with pytest.raises(ValueError, match=r"y_test \(6, 1\) int64: expected \(6,\)"):
        fit_scratch(network, x, y, x_test=x, y_test=y[:, None])
    with pytest.raises(ValueError, match=r"labels \(6, 1\)"):
        scratch.accuracy(network, x, y[:, None])


def test_scratch_backprop_refuses_targets_that_would_broadcast(scratch_problem):
    network, _, x, y = scratch_problem
    activations = scratch.forward_propagation(network, x)
    # (B, 1) or (1, K) targets broadcast against the (B, K) output to a wrong error.
    for targets in (y[:, None].astype(float), scratch.one_hot(y[:1], 3), y):
        with pytest.raises(ValueError, match=r"y_onehot \(.*\): expected \(6, 3\)"):
            scratch.backward_propagate_error(network, activations, targets)
        with pytest.raises(ValueError, match=r"y_onehot \(.*\): expected \(6, 3\)"):
            scratch.loss(network, x, targets)
    deltas = scratch.backward_propagate_error(network, activations, scratch.one_hot(y, 3))
    # Without the input, zip paired each layer with the wrong activations (or dropped one).
    with pytest.raises(ValueError, match="takes 3 activations .* and 2 deltas; got 2 and 2"):
        scratch.update_weights(network, activations[1:], deltas, 0.1)


def test_scratch_refuses_an_integer_dtype_a_zero_batch_and_no_data(scratch_problem):
    network, _, x, y = scratch_problem
    # Integer weights were all rounded to 0.
    with pytest.raises(TypeError, match="dtype must be a float dtype; got int32"):
        scratch.initialize_network((4, 3), dtype=np.int32)
    with pytest.raises(ValueError, match="batch_size must be a positive integer; got 0"):
        fit_scratch(network, x, y, batch_size=0)  # was: range() arg 3 must not be zero
    with pytest.raises(ValueError, match=r"x \(0, 12\) is empty"):
        fit_scratch(network, x[:0], y[:0])  # was: ZeroDivisionError


def test_scratch_refuses_counts_rates_seeds_and_inputs_it_would_misuse(scratch_problem):
    network, _, x, y = scratch_problem
    # Each once ran without a word, or failed deep in NumPy naming no argument.
    refused = [
        (dict(n_epoch=0), "n_epoch must be a positive integer; got 0"),  # trained nothing
        (dict(n_epoch=2.0), "n_epoch must be a positive integer; got 2.0"),  # range() failed
        (dict(l_rate=-1.0), "l_rate must be a finite number, 0 or above; got -1.0"),  # ascent
        (dict(l_rate=float("nan")), "l_rate must be a finite number, 0 or above; got nan"),
        (dict(seed=-1), "seed must be a non-negative integer; got -1"),
        (dict(x_test=x[:0], y_test=y[:0]), r"x_test \(0, 12\) is empty: there is nothing to score"),
    ]  # fmt: skip
    for change, message in refused:
        with pytest.raises(ValueError, match=f"^{message}"):
            fit_scratch(network, x, y, **change)
    with pytest.raises(ValueError, match="^x holds NaN or inf"):  # blamed on the rate
        fit_scratch(network, np.full_like(x, np.nan), y)
    single = scratch.initialize_network((12, 5, 3), dtype=np.float32)  # 1e-50 rounds to 0
    with pytest.raises(ValueError, match=r"^l_rate 1e-50 is below float32's smallest normal "
                       r"number, 1.18e-38, where it rounds to 0 or loses its precision \(the "
                       r"network's type\)$"):  # fmt: skip
        fit_scratch(single, x.astype(np.float32), y, l_rate=1e-50)
    fit_scratch(network, x, y, l_rate=1e-50)  # float64 holds it
    with pytest.raises(ValueError, match=r"^x \(0, 12\) is empty: an accuracy needs"):
        scratch.accuracy(network, x[:0], y[:0])  # NaN, and two NumPy warnings
    with pytest.raises(ValueError, match="^batch_size must be a positive integer; got 0"):
        scratch.predict(network, x, batch_size=0)
    with pytest.raises(ValueError, match=r"^layer_sizes \(4, 2.7, 3\): each size must be"):
        scratch.initialize_network((4, 2.7, 3))  # a layer of 2
    with pytest.raises(ValueError, match="^seed must be a non-negative integer; got 1.5"):
        scratch.initialize_network((4, 3), seed=1.5)
    activations = scratch.forward_propagation(network, x)
    targets = scratch.one_hot(y, 3)
    with pytest.raises(ValueError, match="^activations: 2 arrays for a network of 2 layers"):
        scratch.backward_propagate_error(network, activations[1:], targets)  # 1 delta of 2


def test_cannot_read_falls_back_to_the_error_when_it_has_no_strerror():
    from jaxcifar.errors import cannot_read

    assert cannot_read("x.bin", OSError("device gone")) == "x.bin: cannot read (device gone)"
