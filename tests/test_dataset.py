import numpy as np
import pytest

from jaxcifar.data import Dataset, flatten, to_float
from jaxcifar.data.preprocess import channel_stats, standardize
from jaxcifar.errors import ConfigError, DataError


def make(n=10, labels=None):
    images = np.zeros((n, 4, 4, 3), np.uint8)
    labels = np.arange(n, dtype=np.int32) % 10 if labels is None else labels
    return Dataset(images, labels, tuple("abcdefghij"), source="test")


def test_rejects_labels_out_of_range_naming_source():
    with pytest.raises(DataError, match=r"test: labels must lie in 0\.\.9; found 1\.\.10"):
        make(labels=np.arange(11, dtype=np.int32)[1:])


def test_rejects_count_mismatch_and_wrong_dtypes():
    with pytest.raises(DataError, match="10 images but labels of shape"):
        make(labels=np.zeros(9, np.int32))
    with pytest.raises(DataError, match="int32 labels"):
        make(labels=np.zeros(10, np.int64))
    with pytest.raises(DataError, match="uint8"):
        Dataset(np.zeros((2, 4, 4, 3), np.float32), np.zeros(2, np.int32), ("a",))


def test_subset_is_seeded_and_keeps_order():
    labels = np.arange(10, dtype=np.int32)
    images = np.broadcast_to(labels.astype(np.uint8)[:, None, None, None], (10, 4, 4, 3))
    data = Dataset(images, labels, tuple("abcdefghij"))  # image i is all i
    sub = data.subset(4, seed=1)
    assert len(sub) == 4 and np.all(np.diff(sub.labels) > 0)
    assert np.array_equal(sub.images, data.images[sub.labels])  # images go with their labels
    assert np.array_equal(sub.labels, data.subset(4, seed=1).labels)
    other = data.subset(4, seed=2)
    assert not np.array_equal(other.labels, sub.labels)  # the seed picks the examples
    assert not np.array_equal(sub.labels, np.arange(4))  # not just the first n
    assert not np.array_equal(other.labels, np.arange(4))
    assert data.subset(50) is data


@pytest.mark.parametrize("n", [0, -3, np.int64(-1)])
def test_subset_refuses_a_size_that_is_not_positive(n):
    # As a slice bound, -3 would keep all but three examples and 0 none.
    with pytest.raises(ConfigError, match=r"^subset size n must be a positive integer; got "):
        make().subset(n)


def test_to_float_maps_uint8_onto_minus_one_one():
    out = to_float(np.array([0, 255, 51], np.uint8))
    np.testing.assert_allclose(out, [-1.0, 1.0, -0.6], atol=1e-6)
    assert out.dtype == np.float32
    assert flatten(np.zeros((3, 2, 2, 1))).shape == (3, 4)
    assert flatten(np.zeros((0, 2, 2, 1))).shape == (0, 4)  # an empty batch too


def test_channel_stats_are_exact_and_standardize_uses_them():
    images = np.random.default_rng(0).integers(0, 256, (7, 5, 3, 2), dtype=np.uint8)
    mean, std = channel_stats(images)
    pixels = images.reshape(-1, 2).astype(np.float64) / 255
    np.testing.assert_allclose(mean, pixels.mean(0), rtol=1e-6)
    np.testing.assert_allclose(std, pixels.std(0), rtol=1e-6)
    assert mean.dtype == std.dtype == np.float32 and mean.shape == (2,)
    out = standardize(images, mean, std)
    assert out.dtype == np.float32 and out.shape == images.shape
    np.testing.assert_allclose(out.reshape(-1, 2).mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(out.reshape(-1, 2).std(0), 1, atol=1e-5)
    with pytest.raises(TypeError, match="uint8"):
        channel_stats(pixels)


def test_rejects_negative_labels():
    # One-hot encoding turns -1 into a row of zeros: silently no class at all.
    with pytest.raises(DataError, match=r"test: labels must lie in 0\.\.9; found -1\.\.8"):
        make(labels=np.arange(-1, 9, dtype=np.int32))


def test_rejects_images_without_a_channel_axis_and_labels_as_a_column():
    labels = np.zeros(2, np.int32)
    with pytest.raises(DataError, match=r"images as \(N, H, W, C\) uint8, got \(2, 4, 4\) uint8"):
        Dataset(np.zeros((2, 4, 4), np.uint8), labels, ("a",))
    with pytest.raises(DataError, match=r"2 images but labels of shape \(2, 1\)"):
        Dataset(np.zeros((2, 4, 4, 1), np.uint8), labels[:, None], ("a",))


def test_subset_takes_a_numpy_integer_size():
    # Sizes computed with NumPy (a fraction of len(data), say) are NumPy integers.
    assert len(make().subset(np.int64(3))) == 3


def test_a_model_built_for_class_names_written_in_another_unicode_form_fits():
    # A checkpoint trained where macOS wrote "café" as "cafe" + a combining accent (NFD) must
    # fit the same names read elsewhere (NFC): `mismatch` printed two identical-looking lists.
    data = Dataset(np.zeros((2, 4, 4, 3), np.uint8), np.array([0, 1], np.int32),
                   ("bistro", "caf\u00e9"), source="test")  # fmt: skip
    assert data.mismatch((4, 4, 3), ("bistro", "cafe\u0301")) is None
    assert data.mismatch((4, 4, 3), ("cafe\u0301", "bistro")) == (
        "classes", ("bistro", "caf\u00e9"), ("caf\u00e9", "bistro")
    )
