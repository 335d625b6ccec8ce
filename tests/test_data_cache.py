import errno
import gc
import os
import shutil
import tarfile
import warnings

import numpy as np
import pytest
from PIL import Image

from jaxcifar.data import cache, load, tree
from jaxcifar.errors import ConfigError, DataError
from data_files import write_idx_set, write_tree


def write_tiny_tree(root):
    """Two 2x2 images a split, one of each class, the test split's unlike the training's."""
    write_tree(root, per_class=1, size=(2, 2), classes=("a", "b"),
               fill=lambda rng, split, k: (k * 100, 50 * (split == "test"), 0))  # fmt: skip


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
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for garbage in (b"not a zip", entry.read_bytes()[:-40], b""):
            entry.write_bytes(garbage)
            data = load("cifar10", "train", data_dir=archive)
            np.testing.assert_array_equal(data.images, first.images)
            assert entry.stat().st_size > 100  # rewritten whole
        gc.collect()
    assert [p.name for p in fresh_cache.iterdir()] == [entry.name]  # no temporaries left
    # np.load left a corrupt zip's file open.
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]


def test_changed_source_gets_a_new_entry(tmp_path, fresh_cache):
    write_tiny_tree(tmp_path / "cifar10")
    assert load("cifar10", "train", data_dir=tmp_path).images[1, 0, 0, 0] == 100
    Image.new("RGB", (2, 2), (7, 0, 0)).save(tmp_path / "cifar10" / "train" / "b" / "1.png")
    data = load("cifar10", "train", data_dir=tmp_path)
    assert len(data) == 3 and data.images[2, 0, 0, 0] == 7
    assert len(list(fresh_cache.iterdir())) == 2


def test_class_folders_swapped_by_name_get_their_new_labels(tmp_path, fresh_cache):
    # Files of one size and mtime (BMPs unpacked from one archive) under the same names: the
    # swap changed no path, size or mtime, and the cache served the old labels, the model
    # then trained with the two classes exchanged.
    write_tree(tmp_path / "data", per_class=2, size=(2, 2), classes=("cat", "dog"),
               fill=lambda rng, split, k: (200 * k, 0, 0), suffix=".bmp")  # fmt: skip
    for path in (tmp_path / "data").rglob("*.bmp"):
        os.utime(path, ns=(1_700_000_000_000_000_000,) * 2)
    before = load("cifar10", "train", data_dir=tmp_path / "data")
    assert before.images[before.labels == 1, 0, 0, 0].tolist() == [200, 200]  # dog: bright
    for split in ("train", "test"):
        folder = tmp_path / "data" / split
        (folder / "cat").rename(folder / "swap")
        (folder / "dog").rename(folder / "cat")
        (folder / "swap").rename(folder / "dog")
    after = load("cifar10", "train", data_dir=tmp_path / "data")
    assert after.images[after.labels == 1, 0, 0, 0].tolist() == [0, 0]  # dog: now the dark ones


def test_a_copy_of_an_idx_folder_is_served_from_the_cache(tmp_path, fresh_cache, monkeypatch):
    # Its labels are in its files, not its paths: a copy (new inode numbers, as staging data
    # to a node's scratch disk makes) needs no decode, nor a second entry.
    write_idx_set(tmp_path / "mnist")
    first = load("mnist", "train", data_dir=tmp_path / "mnist")
    shutil.copytree(tmp_path / "mnist", tmp_path / "copy" / "mnist")  # mtimes kept
    forbid_decoding(monkeypatch)
    again = load("mnist", "train", data_dir=tmp_path / "copy" / "mnist")
    np.testing.assert_array_equal(again.images, first.images)
    assert len(list(fresh_cache.iterdir())) == 1


def test_an_unwritable_cache_keeps_the_splits_of_one_source_only_in_memory(tmp_path,
                                                                          monkeypatch):  # fmt: skip
    # Each source decoded would stay in memory for the process's life.
    from jaxcifar.data import sources

    monkeypatch.setattr(sources, "_UNCACHED", {})
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("JAXCIFAR_CACHE", str(tmp_path / "file"))
    for name in ("a", "b"):
        write_tiny_tree(tmp_path / name)
        with pytest.warns(UserWarning, match="could not write the dataset cache"):
            load("cifar10", "train", data_dir=tmp_path / name)
    assert [source for _, source in sources._UNCACHED] == [str(tmp_path / "b")]


def test_unwritable_cache_only_warns_once_and_decodes_once_for_both_splits(
    archive, tmp_path, monkeypatch
):
    # train loads both splits: it decoded the source twice, and warned twice.
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("JAXCIFAR_CACHE", str(blocker / "cache"))
    reads = []
    monkeypatch.setattr(tree, "read_tar", lambda path, read=tree.read_tar: reads.append(path)
                        or read(path))  # fmt: skip
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train = load("cifar10", "train", data_dir=archive)
        test = load("cifar10", "test", data_dir=archive)
    [warned] = caught
    assert str(warned.message).startswith(f"could not write the dataset cache {blocker}/cache/")
    assert reads == [archive] and len(train) == len(test) == 2
    assert test.labels.tolist() == [0, 1] and test.images[0, 0, 0, 1] == 50


def test_data_dir_errors(tmp_path, fresh_cache):
    with pytest.raises(DataError, match=r"data dir .*missing does not exist"):
        load("cifar10", "train", data_dir=tmp_path / "missing")
    (tmp_path / "notes.txt").write_text("")
    with pytest.raises(
        DataError, match=r"notes\.txt is a file but not a \.tar, \.tar\.gz or \.tgz archive"
    ):
        load("cifar10", "train", data_dir=tmp_path / "notes.txt")
    with pytest.raises(DataError) as error:
        load("cifar10", "train", data_dir=tmp_path)
    message = str(error.value)
    assert message.startswith(
        f"no cifar10 data in {tmp_path}: expected a folder or .tar/.tar.gz archive"
    )
    for looked_for in (
        "data_batch_1..5 and test_batch",
        "data_batch_1..5.bin",
        "train/<class>",
        "cifar-10*",
    ):
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
    with pytest.raises(
        ConfigError, match="unknown split 'validation'; expected one of train, test"
    ):
        load("mnist", "validation")


def rewrite_idx_folder(folder, mtime_ns, **changes):
    """Write the IDX set into `folder` again (raw, so the same counts keep the same sizes),
    stamped with `mtime_ns`; returns what it wrote."""
    written = write_idx_set(folder, gz=False, **changes)
    for path in folder.iterdir():
        os.utime(path, ns=(mtime_ns, mtime_ns))
    return written


@pytest.mark.parametrize(
    "changes, seconds_later",
    [
        ({"seed": 1}, 1),  # other pixels in files of the same sizes, rewritten later
        ({"n_train": 7}, 0),  # other sizes, the old times kept (cp -p, tar x)
    ],
    ids=["same sizes", "same times"],
)
def test_a_rewritten_data_folder_is_decoded_again(tmp_path, fresh_cache, changes, seconds_later):
    folder = tmp_path / "mnist"
    rewrite_idx_folder(folder, 10**18)
    load("mnist", "train", data_dir=folder)
    written = rewrite_idx_folder(folder, 10**18 + seconds_later * 10**9, **changes)
    np.testing.assert_array_equal(load("mnist", "train", data_dir=folder).images[..., 0],
                                  written["train"][0])  # fmt: skip


def test_an_image_moved_to_another_class_folder_is_decoded_again(tmp_path, fresh_cache):
    # `mv` keeps a file's size and time: only its path says the label changed.
    write_tiny_tree(tmp_path / "cifar10")
    train = tmp_path / "cifar10" / "train"
    image = (train / "b" / "0.png").read_bytes()
    for path in (train / "a" / "0.png", train / "b" / "0.png", train / "b" / "1.png"):
        path.write_bytes(image)  # the same size
        os.utime(path, ns=(10**18, 10**18))  # and the same time
    assert load("cifar10", "train", data_dir=tmp_path).labels.tolist() == [0, 1, 1]
    (train / "b" / "1.png").rename(train / "a" / "1.png")
    assert load("cifar10", "train", data_dir=tmp_path).labels.tolist() == [0, 0, 1]


@pytest.mark.parametrize("packed", [False, True])
def test_entries_of_another_cache_format_are_not_read(tmp_path, fresh_cache, monkeypatch, packed):
    # cache.FORMAT is bumped when a reader's output changes: older entries must go unused.
    write_tiny_tree(tmp_path / "cifar10")
    data_dir = tmp_path
    if packed:
        data_dir = tmp_path / "cifar10.tar"
        with tarfile.open(data_dir, "w") as tar:
            tar.add(tmp_path / "cifar10", arcname="")
    load("cifar10", "train", data_dir=data_dir)
    monkeypatch.setattr(cache, "FORMAT", cache.FORMAT + b"-next")
    decoded = []
    for name in ("read_tar", "read_folder"):
        read = getattr(tree, name)
        monkeypatch.setattr(tree, name, lambda *a, read=read: decoded.append(a) or read(*a))
    load("cifar10", "train", data_dir=data_dir)
    assert len(decoded) == 1 and len(list(fresh_cache.iterdir())) == 2


def test_an_archive_changed_past_its_first_mebibyte_gets_a_new_entry(tmp_path):
    # An archive's key must hash all of it, not only the part read first.
    head = bytes(3 << 20)
    first, second = tmp_path / "a.tar", tmp_path / "b.tar"
    first.write_bytes(head + b"one")
    second.write_bytes(head + b"two")
    assert cache.file_digest(first) != cache.file_digest(second)


def test_an_empty_cache_variable_counts_as_unset(tmp_path, monkeypatch):
    # Else Path("") would put the cache entries in the current folder.
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("JAXCIFAR_CACHE", "")
    assert cache.cache_dir() == tmp_path / ".cache" / "jaxcifar"


@pytest.mark.parametrize(
    "spoil",
    [
        lambda arrays: arrays.pop("test_labels"),  # a split missing
        lambda arrays: arrays.update(train_labels=arrays["train_labels"] + 5),  # out of range
    ],
    ids=["a split missing", "labels out of range"],
)
def test_a_cache_entry_that_is_a_valid_npz_of_bad_arrays_is_rebuilt(archive, fresh_cache, spoil):
    decoded = {split: load("cifar10", split, data_dir=archive) for split in ("train", "test")}
    assert not np.array_equal(decoded["train"].images, decoded["test"].images)
    [entry] = fresh_cache.iterdir()
    with np.load(entry) as stored:
        arrays = dict(stored)
    spoil(arrays)
    np.savez(entry, **arrays)
    for split, first in decoded.items():
        again = load("cifar10", split, data_dir=archive)
        np.testing.assert_array_equal(again.images, first.images)
        np.testing.assert_array_equal(again.labels, first.labels)
    with np.load(entry) as rebuilt:  # rewritten whole, not only read around
        assert set(rebuilt) >= {"train_images", "train_labels", "test_images", "test_labels"}
        assert set(rebuilt["train_labels"].tolist()) == {0, 1}


def test_a_dangling_link_in_a_data_folder_is_a_data_error_naming_it(tmp_path, fresh_cache):
    # Fingerprinting stats every file before any is read: a bare OSError there exits 1.
    write_tree(tmp_path)
    dangling = tmp_path / "train" / "cat" / "9.png"
    os.symlink(tmp_path / "gone.png", dangling)
    expected = rf"^{dangling}: cannot read \(No such file or directory\)$"
    with pytest.raises(DataError, match=expected):
        load("cifar10", "train", data_dir=tmp_path)


def test_a_link_to_itself_in_a_data_folder_is_a_data_error_naming_it(tmp_path, fresh_cache):
    # Any OSError of the stat, not only a missing target: this one is ELOOP.
    write_tree(tmp_path)
    loop = tmp_path / "train" / "cat" / "9.png"
    os.symlink("9.png", loop)
    expected = f"{loop}: cannot read ({os.strerror(errno.ELOOP)})"
    with pytest.raises(DataError) as caught:
        load("cifar10", "train", data_dir=tmp_path)
    assert str(caught.value) == expected
