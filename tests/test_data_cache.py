import tarfile

import numpy as np
import pytest
from PIL import Image

from jaxcifar.data import load, tree
from jaxcifar.errors import ConfigError, DataError


def write_tiny_tree(root):
    for split in ("train", "test"):
        for i, name in enumerate(("a", "b")):
            (root / split / name).mkdir(parents=True)
            Image.new("RGB", (2, 2), (i * 100, 0, 0)).save(root / split / name / "0.png")


@pytest.fixture
def archive(tmp_path):
    write_tiny_tree(tmp_path / "tree")
    path = tmp_path / "cifar10-tiny.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        tar.add(tmp_path / "tree", arcname="")
    return path


def forbid_decoding(monkeypatch):
    monkeypatch.setattr(tree, "read_tar", lambda path: pytest.fail("decoded again"))
    monkeypatch.setattr(tree, "read_folder", lambda *a: pytest.fail("decoded again"))


def test_one_decode_serves_both_splits_and_later_loads(archive, fresh_cache, monkeypatch):
    train = load("cifar10", "train", data_dir=archive)
    [entry] = fresh_cache.iterdir()
    assert entry.name.startswith("cifar10-") and entry.suffix == ".npz"
    forbid_decoding(monkeypatch)
    test = load("cifar10", "test", data_dir=archive)
    again = load("cifar10", "train", data_dir=archive)
    np.testing.assert_array_equal(again.images, train.images)
    assert again.class_names == ("a", "b") and again.source == str(archive)
    assert test.labels.tolist() == [0, 1]


def test_corrupt_cache_entry_is_rebuilt(archive, fresh_cache):
    first = load("cifar10", "train", data_dir=archive)
    [entry] = fresh_cache.iterdir()
    for garbage in (b"not a zip", entry.read_bytes()[:-40], b""):
        entry.write_bytes(garbage)
        data = load("cifar10", "train", data_dir=archive)
        np.testing.assert_array_equal(data.images, first.images)
        assert entry.stat().st_size > 100  # rewritten whole
    assert [p.name for p in fresh_cache.iterdir()] == [entry.name]  # no temporaries left


def test_changed_source_gets_a_new_entry(tmp_path, fresh_cache):
    write_tiny_tree(tmp_path / "cifar10")
    assert load("cifar10", "train", data_dir=tmp_path).images[1, 0, 0, 0] == 100
    Image.new("RGB", (2, 2), (7, 0, 0)).save(tmp_path / "cifar10" / "train" / "b" / "1.png")
    data = load("cifar10", "train", data_dir=tmp_path)
    assert len(data) == 3 and data.images[2, 0, 0, 0] == 7
    assert len(list(fresh_cache.iterdir())) == 2


def test_unwritable_cache_only_warns(archive, tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("JAXCIFAR_CACHE", str(blocker / "cache"))
    with pytest.warns(UserWarning, match="could not write the dataset cache"):
        assert len(load("cifar10", "train", data_dir=archive)) == 2


def test_data_dir_errors(tmp_path, fresh_cache):
    with pytest.raises(DataError, match=r"data dir .*missing does not exist"):
        load("cifar10", "train", data_dir=tmp_path / "missing")
    (tmp_path / "notes.txt").write_text("")
    with pytest.raises(DataError, match=r"notes\.txt is a file but not a \.tar, \.tar\.gz or \.tgz archive"):
        load("cifar10", "train", data_dir=tmp_path / "notes.txt")
    with pytest.raises(DataError) as error:
        load("cifar10", "train", data_dir=tmp_path)
    message = str(error.value)
    assert message.startswith(f"no cifar10 data in {tmp_path}: expected a folder or .tar/.tar.gz archive")
    for looked_for in ("data_batch_1..5 and test_batch", "data_batch_1..5.bin", "train/<class>", "cifar-10*"):
        assert looked_for in message


def test_archive_named_after_dataset_without_its_data(tmp_path, fresh_cache):
    (tmp_path / "readme.txt").write_text("hi")
    with tarfile.open(tmp_path / "mnist-extra.tar", "w") as tar:
        tar.add(tmp_path / "readme.txt", arcname="readme.txt")
    with pytest.raises(DataError, match=r"mnist-extra\.tar holds no mnist data: expected .*IDX"):
        load("mnist", "train", data_dir=tmp_path)


def test_unknown_dataset_or_split_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown dataset 'cifar100'"):
        load("cifar100", "train")
    with pytest.raises(ConfigError, match="unknown split 'validation'; expected one of train, test"):
        load("mnist", "validation")
