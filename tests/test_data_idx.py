import gzip
import tarfile

import numpy as np
import pytest

from jaxcifar.data import load, load_split
from jaxcifar.data.dataset import FASHION_MNIST_CLASSES, MNIST_CLASSES
from jaxcifar.data.idx import IMAGES_MAGIC, LABELS_MAGIC, parse
from jaxcifar.data.sources import ALIASES
from jaxcifar.errors import ConfigError, DataError
from data_files import idx_bytes, write_idx_set


def test_load_split_cuts_to_the_seeded_subset_of_load(tmp_path, fresh_cache):
    write_idx_set(tmp_path, n_train=30)
    whole = load("mnist", "train", data_dir=tmp_path)
    for limit, seed in ((None, 0), (7, 0), (7, 5), (99, 0)):
        cut = load_split("mnist", "train", data_dir=tmp_path, limit=limit, seed=seed)
        expected = whole if limit is None else whole.subset(limit, seed=seed)
        np.testing.assert_array_equal(cut.images, expected.images)
        np.testing.assert_array_equal(cut.labels, expected.labels)
        assert len(cut) == min(limit or 30, 30)


@pytest.mark.parametrize("limit", [0, -5, 2.5])
def test_load_split_refuses_a_limit_that_is_not_positive_before_reading(
    tmp_path, fresh_cache, limit
):
    write_idx_set(tmp_path, n_train=30)
    with pytest.raises(ConfigError, match=rf"^limit must be a positive integer; got {limit}$"):
        load_split("mnist", "train", data_dir=tmp_path, limit=limit)
    assert not fresh_cache.exists()  # refused before the data was read and cached


@pytest.mark.parametrize("gz", [True, False])
def test_reads_idx_files_gz_and_raw(tmp_path, fresh_cache, gz):
    written = write_idx_set(tmp_path / "data", gz=gz)
    for split in ("train", "test"):
        data = load("mnist", split, data_dir=tmp_path / "data")
        images, labels = written[split]
        assert data.images.shape == (len(images), 5, 3, 1) and data.images.dtype == np.uint8
        np.testing.assert_array_equal(data.images[..., 0], images)
        np.testing.assert_array_equal(data.labels, labels.astype(np.int32))
        assert data.labels.dtype == np.int32
        assert data.class_names == MNIST_CLASSES
        assert data.source == str(tmp_path / "data")


def test_finds_files_in_a_subfolder_named_after_the_dataset(tmp_path, fresh_cache):
    write_idx_set(tmp_path / "fashion-mnist", seed=1)
    data = load("fashion_mnist", "train", data_dir=tmp_path)
    assert data.class_names == FASHION_MNIST_CLASSES and len(data) == 6
    # MNIST uses the same file names but must not pick up Fashion-MNIST's folder.
    with pytest.raises(
        DataError, match=r"no mnist data in .*train-images-idx3-ubyte.*named mnist\*"
    ):
        load("mnist", "train", data_dir=tmp_path)


def test_a_data_dir_named_after_another_dataset_is_refused(tmp_path, fresh_cache, monkeypatch):
    # IDX files do not say which dataset they hold: only the data dir's name can.
    write_idx_set(tmp_path / "fashion-mnist")
    named = r"^data dir \S*/fashion-mnist is named after fashion_mnist, not mnist: point it at "
    with pytest.raises(DataError, match=named):
        load("mnist", "train", data_dir=tmp_path / "fashion-mnist")
    # Read as another format's dataset (the default cifar10), it finds none, and says which
    # dataset the folder is named after; in words every caller can act on (it said "pass
    # --dataset fashion_mnist?" to `evaluate`, which has no --dataset, and to the library).
    hint = r"; it is named after fashion_mnist: is it fashion_mnist data\?$"
    with pytest.raises(DataError, match=r"^no cifar10 data in \S*/fashion-mnist: .*" + hint):
        load("cifar10", "train", data_dir=tmp_path / "fashion-mnist")
    write_idx_set(tmp_path / "MNIST-digits")
    monkeypatch.chdir(tmp_path / "MNIST-digits")  # "." is named after the folder it is
    with pytest.raises(DataError, match=r"^data dir \. is named after mnist, not fashion_mnist"):
        load("fashion_mnist", "train", data_dir=".")
    assert not fresh_cache.exists()
    archive = tmp_path / "cifar10-images.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(tmp_path / "MNIST-digits", arcname="")
    with pytest.raises(DataError, match=r"cifar10-images\.tar is named after cifar10, not mnist"):
        load("mnist", "train", data_dir=archive)
    # A data dir named after another dataset may still hold this one's folder.
    write_idx_set(tmp_path / "cifar-10-work" / "mnist")
    assert load("mnist", "train", data_dir=tmp_path / "cifar-10-work").class_names == MNIST_CLASSES
    # A name names one dataset at most: no alias starts with another dataset's.
    for name, aliases in ALIASES.items():
        for other, other_aliases in ALIASES.items():
            assert other == name or not any(a.startswith(other_aliases) for a in aliases)


def test_reads_data_dir_from_environment(tmp_path, fresh_cache, monkeypatch):
    write_idx_set(tmp_path / "mnist")
    monkeypatch.setenv("JAXCIFAR_DATA_DIR", str(tmp_path))
    assert len(load("mnist", "test")) == 4


def test_a_data_dir_from_the_environment_that_holds_no_data_is_named_so(tmp_path, fresh_cache,
                                                                         monkeypatch):  # fmt: skip
    # `load` called without a data_dir said "data dir PATH does not exist": which path, the
    # caller never gave one.
    monkeypatch.setenv("JAXCIFAR_DATA_DIR", str(tmp_path / "gone"))
    with pytest.raises(DataError) as refused:
        load("mnist", "test")
    assert str(refused.value) == f"$JAXCIFAR_DATA_DIR: data dir {tmp_path / 'gone'} does not exist"
    with pytest.raises(DataError) as refused:  # given, the path is the caller's own
        load("mnist", "test", data_dir=tmp_path / "gone")
    assert str(refused.value) == f"data dir {tmp_path / 'gone'} does not exist"


def test_an_empty_data_dir_is_refused_not_read_as_the_current_folder():
    with pytest.raises(ConfigError, match=r"^data_dir is empty; expected a folder or archive "
                       r"path, or None for \$JAXCIFAR_DATA_DIR or else the official release$"):
        load("mnist", "test", data_dir="")


def test_parse_rejects_wrong_magic_naming_file():
    data = idx_bytes(np.zeros((2, 3, 3), np.uint8), IMAGES_MAGIC)
    with pytest.raises(
        DataError, match=r"f\.idx: IDX magic number 0x00000803, expected 0x00000801"
    ):
        parse(data, LABELS_MAGIC, "f.idx")


def test_parse_rejects_an_idx_file_of_another_element_type():
    # 0x0D is float32: same number of dims as images, but not uint8 pixels.
    data = idx_bytes(np.zeros((2, 3, 3), ">f4"), 0x00000D03)
    with pytest.raises(DataError, match=r"^f: IDX magic number 0x00000d03, expected 0x00000803$"):
        parse(data, IMAGES_MAGIC, "f")


def test_first_load_returns_writeable_arrays_like_cached_loads(tmp_path, fresh_cache):
    # Views of the file's bytes would be read-only on the first load only.
    write_idx_set(tmp_path / "mnist")
    for split in ("train", "test"):  # train decoded, test then read from the cache
        data = load("mnist", split, data_dir=tmp_path)
        assert data.images.flags.writeable and data.labels.flags.writeable


def test_parse_rejects_truncated_and_trailing_bytes():
    data = idx_bytes(np.zeros((2, 3, 3), np.uint8), IMAGES_MAGIC)
    with pytest.raises(
        DataError, match=r"f: truncated: dims \(2, 3, 3\) need 34 bytes, file has 33"
    ):
        parse(data[:-1], IMAGES_MAGIC, "f")
    with pytest.raises(DataError, match="f: has trailing bytes"):
        parse(data + b"\0", IMAGES_MAGIC, "f")
    with pytest.raises(DataError, match=r"f: truncated IDX header \(10 of 16 bytes\)"):
        parse(data[:10], IMAGES_MAGIC, "f")
    with pytest.raises(DataError, match="too short for an IDX header"):
        parse(b"\0\0", IMAGES_MAGIC, "f")
    with pytest.raises(DataError, match=r"dims \(0, 3, 3\) hold no data"):
        parse(idx_bytes(np.zeros((0, 3, 3), np.uint8), IMAGES_MAGIC), IMAGES_MAGIC, "f")


def test_corrupt_files_in_a_folder_raise_data_error_naming_them(tmp_path, fresh_cache):
    folder = tmp_path / "mnist"
    write_idx_set(folder, gz=False)
    labels = folder / "t10k-labels-idx1-ubyte"
    labels.write_bytes(idx_bytes(np.array([1, 2, 12, 3], np.uint8), LABELS_MAGIC))
    message = r"t10k-labels-idx1-ubyte: labels must lie in 0\.\.9; found 1\.\.12"
    with pytest.raises(DataError, match=message):
        load("mnist", "train", data_dir=tmp_path)
    labels.write_bytes(idx_bytes(np.array([1, 2, 3], np.uint8), LABELS_MAGIC))
    with pytest.raises(
        DataError,
        match=r"t10k-images-idx3-ubyte holds 4 images but .*t10k-labels-idx1-ubyte holds 3 labels",
    ):
        load("mnist", "train", data_dir=tmp_path)
    labels.unlink()
    with pytest.raises(
        DataError, match=r"mnist: missing t10k-labels-idx1-ubyte \(or t10k-labels-idx1-ubyte\.gz\)"
    ):
        load("mnist", "train", data_dir=tmp_path)


def test_bad_gzip_names_file(tmp_path, fresh_cache):
    write_idx_set(tmp_path)
    images = tmp_path / "train-images-idx3-ubyte.gz"
    images.write_bytes(images.read_bytes()[:-10])
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte\.gz: not a valid gzip file"):
        load("mnist", "train", data_dir=tmp_path)


def test_train_and_test_images_of_different_sizes_are_refused_naming_both_files(
    tmp_path, fresh_cache
):
    # A model trained on one split could not be tested on the other; `data info` would show
    # only the training split's size.
    write_idx_set(tmp_path, shape=(5, 3))
    test = np.zeros((4, 6, 3), np.uint8)
    test_file = tmp_path / "t10k-images-idx3-ubyte.gz"
    test_file.write_bytes(gzip.compress(idx_bytes(test, IMAGES_MAGIC)))
    with pytest.raises(DataError) as caught:
        load("mnist", "train", data_dir=tmp_path)
    assert str(caught.value) == (
        f"{tmp_path}/t10k-images-idx3-ubyte.gz holds images of (H, W) (6, 3), but "
        f"{tmp_path}/train-images-idx3-ubyte.gz holds (5, 3): both splits must share one size"
    )
