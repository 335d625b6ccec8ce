import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jaxcifar.data import load
from jaxcifar.errors import DataError

CLASSES = ("cat", "airplane")  # not CIFAR-10's full set, so sorted: airplane, cat


def write_tree(root, per_class=2, size=(4, 3), seed=0):
    """train/<class>/i.png and test/<class>/i.png of random RGB pixels; returns them by path."""
    rng = np.random.default_rng(seed)
    written = {}
    for split in ("train", "test"):
        for name in CLASSES:
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
                written[f"{split}/{name}/{i}.png"] = pixels
    return written


def tar_folder(folder, archive, arcname):
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=arcname)


def test_folder_tree_sorted_classes_and_exact_pixels(tmp_path, fresh_cache):
    written = write_tree(tmp_path / "data")
    (tmp_path / "data" / "train" / "cat" / "notes.txt").write_text("ignored")
    data = load("cifar10", "train", data_dir=tmp_path / "data")
    assert data.class_names == ("airplane", "cat")
    assert data.images.shape == (4, 3, 4, 3)
    np.testing.assert_array_equal(data.labels, [0, 0, 1, 1])
    np.testing.assert_array_equal(data.images[2], written["train/cat/0.png"])
    np.testing.assert_array_equal(data.images[1], written["train/airplane/1.png"])


@pytest.mark.parametrize("arcname", ["", ".", "cifar10-images", "./cifar10-images"])
def test_tarball_with_or_without_top_folder(tmp_path, fresh_cache, arcname):
    written = write_tree(tmp_path / "tree")
    archive = tmp_path / "cifar10-small.tar.gz"
    tar_folder(tmp_path / "tree", archive, arcname)
    for data_dir in (tmp_path, archive):  # found by name in a folder, or given directly
        test = load("cifar10", "test", data_dir=data_dir)
        assert test.source == str(archive)
        np.testing.assert_array_equal(test.images[0], written["test/airplane/0.png"])


def test_cifar10_class_names_keep_canonical_order(tmp_path, fresh_cache):
    for split in ("train", "test"):
        for name in ("truck", "airplane", "cat", "automobile", "bird", "deer", "dog", "frog", "horse", "ship"):
            (tmp_path / split / name).mkdir(parents=True)
            Image.new("RGB", (2, 2)).save(tmp_path / split / name / "a.jpg")
    data = load("cifar10", "test", data_dir=tmp_path)
    assert data.class_names[:3] == ("airplane", "automobile", "bird") and data.class_names[-1] == "truck"
    np.testing.assert_array_equal(data.labels, np.arange(10))


def test_mnist_style_trees_decode_to_one_channel(tmp_path, fresh_cache):
    write_tree(tmp_path / "mnist")
    data = load("mnist", "train", data_dir=tmp_path)
    assert data.images.shape == (4, 3, 4, 1)


def test_image_of_another_size_is_named(tmp_path, fresh_cache):
    write_tree(tmp_path)
    Image.new("RGB", (5, 3)).save(tmp_path / "test" / "cat" / "1.png")
    with pytest.raises(DataError, match=r"test/cat/1\.png: image of 5x3 pixels, expected 4x3 like .*train/airplane/0\.png"):
        load("cifar10", "train", data_dir=tmp_path)


def test_empty_class_folder_is_named(tmp_path, fresh_cache):
    write_tree(tmp_path)
    (tmp_path / "test" / "dog").mkdir()
    with pytest.raises(DataError, match=r"test/dog/: empty class folder"):
        load("cifar10", "train", data_dir=tmp_path)


def test_empty_class_folder_inside_tarball_is_named(tmp_path, fresh_cache):
    write_tree(tmp_path / "tree")
    (tmp_path / "tree" / "train" / "dog").mkdir()
    tar_folder(tmp_path / "tree", tmp_path / "t.tar", "top")
    with pytest.raises(DataError, match=r"t\.tar/top/train/dog/: empty class folder"):
        load("cifar10", "train", data_dir=tmp_path / "t.tar")


def test_undecodable_image_and_missing_split(tmp_path, fresh_cache):
    write_tree(tmp_path)
    (tmp_path / "train" / "cat" / "0.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(DataError, match=r"train/cat/0\.png: not a readable image"):
        load("cifar10", "train", data_dir=tmp_path)
    for path in sorted((tmp_path / "test").rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    with pytest.raises(DataError, match=r"test/: no class folders with images"):
        load("cifar10", "train", data_dir=tmp_path)


def test_symlinked_class_folder_is_followed(tmp_path, fresh_cache):
    written = write_tree(tmp_path / "data")
    cat = tmp_path / "data" / "train" / "cat"
    cat.rename(tmp_path / "cats-kept-elsewhere")
    cat.symlink_to(tmp_path / "cats-kept-elsewhere", target_is_directory=True)
    data = load("cifar10", "train", data_dir=tmp_path / "data")
    np.testing.assert_array_equal(data.labels, [0, 0, 1, 1])
    np.testing.assert_array_equal(data.images[2], written["train/cat/0.png"])


def test_symlink_loop_is_refused_not_walked_forever(tmp_path, fresh_cache):
    write_tree(tmp_path)
    loop = tmp_path / "train" / "cat" / "again"
    loop.symlink_to(tmp_path / "train" / "cat", target_is_directory=True)
    with pytest.raises(DataError, match=r"train/cat/again: .*cat reached twice"):
        load("cifar10", "train", data_dir=tmp_path)


def test_unlistable_class_folder_is_named_not_skipped(tmp_path, fresh_cache, monkeypatch):
    write_tree(tmp_path)
    blocked, real_scandir = tmp_path / "train" / "cat", os.scandir

    def scandir(path="."):  # root can list a chmod 000 folder, so refuse it here instead
        if Path(path) == blocked:
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(DataError, match=rf"{blocked}: cannot read \(Permission denied\)"):
        load("cifar10", "train", data_dir=tmp_path)


def test_decompression_bomb_in_a_tree_is_refused_not_decoded(tmp_path, fresh_cache, monkeypatch):
    write_tree(tmp_path)
    # Pillow warns between MAX_IMAGE_PIXELS and twice that; lowered, a small image will do.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    Image.new("RGB", (40, 40)).save(tmp_path / "train" / "airplane" / "0.png")
    with pytest.raises(DataError, match=r"airplane/0\.png: refused, too large to decode safely"):
        load("cifar10", "train", data_dir=tmp_path)


def test_class_folders_must_match_between_splits(tmp_path, fresh_cache):
    write_tree(tmp_path)
    (tmp_path / "test" / "dog").mkdir()
    Image.new("RGB", (4, 3)).save(tmp_path / "test" / "dog" / "0.png")
    with pytest.raises(DataError, match=r"only in train/: \[\], only in test/: \['dog'\]"):
        load("cifar10", "train", data_dir=tmp_path)


def test_truncated_tarball_is_a_data_error(tmp_path, fresh_cache):
    write_tree(tmp_path / "tree")
    archive = tmp_path / "cifar10.tar.gz"
    tar_folder(tmp_path / "tree", archive, "")
    whole = archive.read_bytes()
    # Mid-stream, and in gzip's 8-byte CRC/length trailer (after tar's end marker).
    for cut in (len(whole) // 2, len(whole) - 5):
        archive.write_bytes(whole[:cut])
        with pytest.raises(DataError, match=r"cifar10\.tar\.gz: not a readable tar archive"):
            load("cifar10", "train", data_dir=archive)
