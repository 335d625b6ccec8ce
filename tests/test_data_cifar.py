import pickle
import tarfile

import numpy as np
import pytest

from jaxcifar.data import load, safe_pickle
from jaxcifar.data.cifar import parse_binary_batch, parse_python_batch
from jaxcifar.data.dataset import CIFAR10_CLASSES
from jaxcifar.errors import DataError
from data_files import (
    BATCHES, RunsCode, binary_batch, make_batches, py2_dumps, python_batch, write_release,
)

def expected(batches, split):
    names = BATCHES[:5] if split == "train" else BATCHES[5:]
    return (
        np.concatenate([batches[n][0] for n in names]),
        np.concatenate([batches[n][1] for n in names]),
    )


def test_python_batch_matches_real_file_format():
    images = np.arange(2 * 3072, dtype=np.uint8).reshape(2, 32, 32, 3)
    data = python_batch(images, [3, 9])
    assert b"cnumpy.core.multiarray\n_reconstruct" in data and b"_codecs" not in data
    parsed_images, labels = parse_python_batch(data, "b")
    np.testing.assert_array_equal(parsed_images, images)
    np.testing.assert_array_equal(labels, [3, 9])
    assert labels.dtype == np.int32


@pytest.mark.parametrize("packed", [False, True])
def test_python_release_folder_and_tarball(tmp_path, fresh_cache, packed):
    batches = make_batches()
    write_release(tmp_path / "cifar-10-batches-py", batches, python_batch)
    data_dir = tmp_path
    if packed:
        data_dir = tmp_path / "out" / "cifar-10-python.tar.gz"
        data_dir.parent.mkdir()
        with tarfile.open(data_dir, "w:gz") as tar:
            tar.add(tmp_path / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    for split in ("train", "test"):
        data = load("cifar10", split, data_dir=data_dir)
        images, labels = expected(batches, split)
        np.testing.assert_array_equal(data.images, images)
        np.testing.assert_array_equal(data.labels, labels)
        assert data.class_names == CIFAR10_CLASSES


def test_binary_release_folder_and_tarball(tmp_path, fresh_cache):
    batches = make_batches(seed=1)
    write_release(tmp_path / "cifar-10-batches-bin", batches, binary_batch, suffix=".bin")
    data = load("cifar10", "train", data_dir=tmp_path)
    images, labels = expected(batches, "train")
    np.testing.assert_array_equal(data.images, images)
    np.testing.assert_array_equal(data.labels, labels)
    archive = tmp_path / "cifar-10-binary.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "cifar-10-batches-bin", arcname="cifar-10-batches-bin")
    test = load("cifar10", "test", data_dir=archive)
    np.testing.assert_array_equal(test.images, expected(batches, "test")[0])


def test_missing_batch_is_named(tmp_path, fresh_cache):
    write_release(tmp_path / "cifar-10-batches-bin", make_batches(), binary_batch, suffix=".bin")
    (tmp_path / "cifar-10-batches-bin" / "data_batch_4.bin").unlink()
    with pytest.raises(
        DataError,
        match=r"cifar-10-batches-bin: missing data_batch_4\.bin; "
        r"expected the CIFAR-10 binary release",
    ):
        load("cifar10", "train", data_dir=tmp_path)


def test_malicious_pickle_is_refused_and_does_not_run(tmp_path, fresh_cache):
    marker = tmp_path / "pwned"
    payload = py2_dumps({b"data": RunsCode(marker), b"labels": []})
    with pytest.raises(DataError, match=r"evil: refusing to unpickle (posix|nt|os)\.system"):
        parse_python_batch(payload, "evil")
    assert not marker.exists()
    # Same through load: a release with one poisoned batch.
    write_release(tmp_path / "cifar-10-batches-py", make_batches(), python_batch)
    (tmp_path / "cifar-10-batches-py" / "data_batch_2").write_bytes(payload)
    with pytest.raises(DataError, match=r"data_batch_2: refusing to unpickle"):
        load("cifar10", "train", data_dir=tmp_path)
    assert not marker.exists()
    # An unlisted builtin is refused as well, e.g. eval via protocol 4's STACK_GLOBAL.
    payload = pickle.dumps(type("E", (), {"__reduce__": lambda self: (eval, ("1",))})(), protocol=4)
    with pytest.raises(DataError, match=r"refusing to unpickle builtins\.eval"):
        parse_python_batch(payload, "evil")


def test_python_batch_field_errors():
    rows = np.zeros((2, 3072), np.uint8)
    cases = [
        ({b"data": rows, b"labels": [1]}, r"b: 2 images but 1 labels"),
        ({b"data": rows, b"labels": [1, 10]}, r"b: labels must lie in 0\.\.9; found 1\.\.10"),
        (
            {b"data": rows[:, :100], b"labels": [1, 2]},
            r"expected data as a \(N, 3072\) uint8 array, found \(2, 100\) uint8",
        ),
        ({b"labels": [1, 2]}, r"found NoneType"),
        ({b"data": rows, b"labels": ["a", "b"]}, r"expected labels as a list of integers"),
        # Float labels would be truncated, 0 rows would silently shrink the training set.
        ({b"data": rows, b"labels": [1.7, 2.0]}, r"b: expected labels as a list of integers"),
        ({b"data": rows[:0], b"labels": []}, r"b: expected data .*, found \(0, 3072\) uint8"),
        ({b"data": rows, b"labels": [1, 2, 3]}, r"b: 2 images but 3 labels"),
        ({b"data": rows.astype(np.int16)}, r"b: a pickled array of dtype 'i2'; expected uint8"),
        ([rows], r"expected a pickled dict"),
    ]
    for batch, message in cases:
        with pytest.raises(DataError, match=message):
            parse_python_batch(py2_dumps(batch), "b")
    with pytest.raises(DataError, match=r"b: not a valid pickle"):
        parse_python_batch(py2_dumps({b"data": rows})[:-5], "b")
    # Python 3 pickles (str keys, protocol 5 arrays) read too.
    images, labels = parse_python_batch(
        pickle.dumps({"data": rows, "labels": [1, 2]}, protocol=5), "b"
    )
    assert images.shape == (2, 32, 32, 3) and list(labels) == [1, 2]


def test_python_batch_refuses_pixels_that_are_not_uint8_itself(monkeypatch):
    # safe_pickle yields only uint8 today; the reader must not rely on that alone.
    batch = {b"data": np.zeros((2, 3072), np.int16), b"labels": [1, 2]}
    monkeypatch.setattr(safe_pickle, "loads", lambda data, where: batch)
    with pytest.raises(DataError, match=r"^b: expected data as a \(N, 3072\) uint8 array, found "):
        parse_python_batch(b"", "b")


def test_binary_batch_errors():
    images = np.zeros((2, 32, 32, 3), np.uint8)
    data = binary_batch(images, np.array([1, 2]))
    with pytest.raises(
        DataError, match=r"b: 6145 bytes is not a whole number of 3073-byte records"
    ):
        parse_binary_batch(data[:-1], "b")
    with pytest.raises(DataError, match=r"b: 0 bytes"):
        parse_binary_batch(b"", "b")
    with pytest.raises(DataError, match=r"b: labels must lie in 0\.\.9; found 1\.\.200"):
        parse_binary_batch(binary_batch(images, np.array([1, 200])), "b")
