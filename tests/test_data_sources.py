"""Where `load` finds a dataset in a data dir (`jaxcifar.data.sources.locate`) and how it reads
archives there (`jaxcifar.data.tree`): names, suffixes and archive layouts users give it."""

import os
import tarfile

import numpy as np
import pytest

from jaxcifar.data import load, tree
from jaxcifar.data.dataset import FASHION_MNIST_CLASSES
from jaxcifar.errors import DataError
from data_files import write_idx_set, write_tree


def test_a_folder_named_after_the_dataset_in_capitals_is_found(tmp_path, fresh_cache):
    written = write_idx_set(tmp_path / "Fashion-MNIST")
    data = load("fashion_mnist", "train", data_dir=tmp_path)
    assert data.source == str(tmp_path / "Fashion-MNIST")
    assert data.class_names == FASHION_MNIST_CLASSES
    np.testing.assert_array_equal(data.images[..., 0], written["train"][0])


def test_a_file_named_after_the_dataset_that_is_no_archive_is_passed_over(tmp_path, fresh_cache):
    # Notes beside the files (mnist-README.txt) are not a tarball to open.
    written = write_idx_set(tmp_path)
    (tmp_path / "mnist-README.txt").write_text("where these files came from")
    data = load("mnist", "test", data_dir=tmp_path)
    assert data.source == str(tmp_path)
    np.testing.assert_array_equal(data.labels, written["test"][1])


def test_a_cifar_100_folder_beside_cifar_10_is_not_taken_for_it(tmp_path, fresh_cache):
    # "cifar-100-python" starts with the alias "cifar-10" and sorts before "cifar10-...".
    (tmp_path / "cifar-100-python" / "train").mkdir(parents=True)
    written = write_tree(tmp_path / "cifar10-images")
    data = load("cifar10", "test", data_dir=tmp_path)
    assert data.source == str(tmp_path / "cifar10-images")
    np.testing.assert_array_equal(data.images[0], written["test/airplane/0.png"])


def test_a_data_dir_named_after_cifar_100_is_not_refused_as_named_after_cifar_10(
    tmp_path, fresh_cache
):
    written = write_idx_set(tmp_path / "cifar-100-and-mnist")
    data = load("mnist", "train", data_dir=tmp_path / "cifar-100-and-mnist")
    np.testing.assert_array_equal(data.labels, written["train"][1])


def test_a_data_dir_under_the_home_folder_may_be_written_with_a_tilde(
    tmp_path, fresh_cache, monkeypatch
):
    written = write_idx_set(tmp_path / "data")
    monkeypatch.setenv("HOME", str(tmp_path))
    data = load("mnist", "train", data_dir="~/data")
    np.testing.assert_array_equal(data.images[..., 0], written["train"][0])


def test_an_archive_with_an_upper_case_suffix_is_read(tmp_path, fresh_cache):
    written = write_tree(tmp_path / "tree")
    archive = tmp_path / "IMAGES.TAR.GZ"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "tree", arcname="images")
    test = load("cifar10", "test", data_dir=archive)
    np.testing.assert_array_equal(test.images[0], written["test/airplane/0.png"])


def test_an_archive_listing_only_its_files_is_read_like_the_folder(tmp_path, fresh_cache):
    # `tar cf x.tar $(find images -type f)` stores no entry for a folder.
    written = write_tree(tmp_path / "images")
    archive = tmp_path / "cifar10-files.tar"
    with tarfile.open(archive, "w") as tar:
        for path in sorted((tmp_path / "images").rglob("*.png")):
            tar.add(path, arcname=f"images/{path.relative_to(tmp_path / 'images')}")
    with tarfile.open(archive) as tar:
        assert all(member.isfile() for member in tar.getmembers())
    train = load("cifar10", "train", data_dir=archive)
    assert train.class_names == ("airplane", "cat")
    np.testing.assert_array_equal(train.images[0], written["train/airplane/0.png"])


def test_an_archive_of_the_training_split_alone_names_the_missing_test_split(
    tmp_path, fresh_cache
):
    # Its one top folder, train/, is the layout's own: not a wrapper to strip.
    write_tree(tmp_path / "tree")
    archive = tmp_path / "cifar10-train.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(tmp_path / "tree" / "train", arcname="train")
    with pytest.raises(DataError) as error:
        load("cifar10", "train", data_dir=archive)
    assert str(error.value).startswith(f"{archive}/test/: ")


def test_an_archive_of_one_top_level_file_keeps_its_name(tmp_path):
    # Only a single top-level folder is a wrapper to strip; a lone file taken for one left
    # the archive empty (every name cut by "data.bin/", which none starts with).
    (tmp_path / "data.bin").write_bytes(b"the data")
    archive = tmp_path / "one-file.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(tmp_path / "data.bin", arcname="data.bin")
    read = tree.read_tar(archive)
    assert (read.files, read.folders, read.prefix) == ({"data.bin": b"the data"}, frozenset(), "")
    assert read.describe("data.bin") == f"{archive}/data.bin"


def linked_tree_archive(root, symlink_to=None, arcname="images"):
    """write_tree's images under root/images, with train/cat/1.png a hard link to 0.png and,
    if given, test/cat/1.png a symbolic link to `symlink_to`, tarred under `arcname`; returns
    (what write_tree wrote, the archive)."""
    written = write_tree(root / "images")
    (root / "images/train/cat/1.png").unlink()
    os.link(root / "images/train/cat/0.png", root / "images/train/cat/1.png")
    if symlink_to is not None:
        (root / "images/test/cat/1.png").unlink()
        os.symlink(symlink_to, root / "images/test/cat/1.png")
    archive = root / "cifar10.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(root / "images", arcname=arcname)
    return written, archive


def test_linked_members_of_an_archive_read_as_the_files_they_link_to(tmp_path, fresh_cache):
    # GNU tar stores a second name of one file as a hard link: the archive must load what the
    # folder it unpacks to loads, not drop the image.
    written, archive = linked_tree_archive(tmp_path, symlink_to="../../train/cat/0.png")
    with tarfile.open(archive) as tar:
        kinds = {m.name: (m.islnk(), m.issym()) for m in tar.getmembers()}
    assert kinds["images/train/cat/1.png"] == (True, False)
    assert kinds["images/test/cat/1.png"] == (False, True)
    from_archive = {split: load("cifar10", split, data_dir=archive) for split in ("train", "test")}
    from_folder = {split: load("cifar10", split, data_dir=tmp_path / "images")
                   for split in ("train", "test")}  # fmt: skip
    for split in ("train", "test"):
        assert len(from_archive[split]) == 4
        np.testing.assert_array_equal(from_archive[split].images, from_folder[split].images)
        np.testing.assert_array_equal(from_archive[split].images[3], written["train/cat/0.png"])


@pytest.mark.parametrize(
    "target, why",
    [
        ("/elsewhere/0.png", "/elsewhere/0.png, which is no file in the archive"),
        ("/images/train/cat/0.png", "/images/train/cat/0.png, which is no file in the archive"),
        ("../../train/cat", "images/train/cat, which is no file in the archive"),
        ("1.png", "images/test/cat/1.png, one of a loop of links"),
        ("2.png", "images/test/cat/2.png, one of a loop of links"),  # 1 -> 2 -> 1
        (".1.png", "images/test/cat/.1.png, a hidden file, which archives are read without"),
    ],
)  # fmt: skip
def test_a_link_to_no_file_of_the_archive_is_refused_naming_it(tmp_path, fresh_cache, target,
                                                               why):  # fmt: skip
    # A path outside the archive (even one whose tail is a member's name: unpacked, it names
    # a file of the host, not of the archive), a folder, a loop, a hidden file (not read, as
    # `.DS_Store` and macOS's `._*` files are not): no image to read.
    write_tree(tmp_path / "images")
    (tmp_path / "images/test/cat/1.png").rename(tmp_path / "images/test/cat/.1.png")
    archive = tmp_path / "cifar10.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(tmp_path / "images", arcname="images")
        for name, linkname in (("1.png", target), ("2.png", "1.png")):
            link = tarfile.TarInfo(f"images/test/cat/{name}")
            link.type, link.linkname = tarfile.SYMTYPE, linkname
            tar.addfile(link)
    with pytest.raises(DataError) as caught:
        load("cifar10", "test", data_dir=archive)
    assert str(caught.value) == f"{archive}: member images/test/cat/1.png links to {why}"


def test_a_link_to_a_link_reads_as_the_file_at_the_end_of_the_chain(tmp_path, fresh_cache):
    # train/cat/1.png is a hard link to 0.png; test/cat/1.png a symbolic link to that link.
    written, archive = linked_tree_archive(tmp_path, symlink_to="../../train/cat/1.png")
    with tarfile.open(archive) as tar:
        assert tar.getmember("images/train/cat/1.png").islnk()
        assert tar.getmember("images/test/cat/1.png").linkname == "../../train/cat/1.png"
    test = load("cifar10", "test", data_dir=archive)
    np.testing.assert_array_equal(test.images[3], written["train/cat/0.png"])


def test_a_hard_link_named_with_a_leading_dot_slash_reads_as_its_file(tmp_path, fresh_cache):
    # `tar cf data.tar ./images` names every member "./images/...", hard links' targets too.
    written, archive = linked_tree_archive(tmp_path, arcname="./images")
    with tarfile.open(archive) as tar:
        assert tar.getmember("./images/train/cat/1.png").linkname == "./images/train/cat/0.png"
    train = load("cifar10", "train", data_dir=archive)
    np.testing.assert_array_equal(train.images[3], written["train/cat/0.png"])


def test_a_file_after_a_link_of_the_same_name_replaces_it(tmp_path, fresh_cache):
    # Appending to an archive (`tar rf`) can store a name twice: the later member is the one
    # unpacked, here the regular file, not the link before it.
    written = write_tree(tmp_path / "images")
    archive = tmp_path / "cifar10.tar"
    with tarfile.open(archive, "w") as tar:
        link = tarfile.TarInfo("images/test/cat/1.png")
        link.type, link.linkname = tarfile.SYMTYPE, "../../train/cat/0.png"
        tar.addfile(link)
        tar.add(tmp_path / "images", arcname="images")
    test = load("cifar10", "test", data_dir=archive)
    np.testing.assert_array_equal(test.images[3], written["test/cat/1.png"])


def test_a_data_dir_that_exists_but_is_no_folder_or_file_is_not_called_missing(
    tmp_path, fresh_cache
):
    # A pipe (or a device) exists: "does not exist" sent users looking for a typo.
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    with pytest.raises(DataError) as caught:
        load("mnist", "train", data_dir=pipe)
    assert str(caught.value) == f"data dir {pipe} is not a folder or an archive"
