import functools
import gzip
import os
import re
import tarfile
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jaxcifar.cli import main
from jaxcifar.data import load
from jaxcifar.data.dataset import CIFAR10_CLASSES
from jaxcifar.errors import DataError
from data_files import write_tree

def tar_folder(folder, archive, arcname):
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=arcname)


def test_folder_tree_sorted_classes_and_exact_pixels(tmp_path, fresh_cache):
    written = write_tree(tmp_path / "data")
    (tmp_path / "data" / "README.md").write_text("beside the splits: not a split's file")
    (tmp_path / "data" / "train" / "cat" / "notes.txt").write_text("skipped")
    with pytest.warns(UserWarning) as warned:
        data = load("cifar10", "train", data_dir=tmp_path / "data")
    assert [str(w.message) for w in warned] == [
        f"{tmp_path / 'data'}/train/: skipped 1 file(s) that are not train/<class>/"
        f"*.png|jpg|jpeg|bmp|gif|webp|tif|tiff images, such as {tmp_path / 'data'}/train/cat/"
        "notes.txt"
    ]
    assert data.class_names == ("airplane", "cat")
    assert data.images.shape == (4, 3, 4, 3)
    np.testing.assert_array_equal(data.labels, [0, 0, 1, 1])
    np.testing.assert_array_equal(data.images[2], written["train/cat/0.png"])
    np.testing.assert_array_equal(data.images[1], written["train/airplane/1.png"])


def test_test_labels_follow_the_test_splits_own_class_counts(tmp_path, fresh_cache):
    # Same total per split, split differently: labels counted on train/ would be wrong.
    written = write_tree(tmp_path / "data")
    for extra in ("train/cat/2.png", "test/airplane/2.png"):
        Image.fromarray(written["train/cat/0.png"]).save(tmp_path / "data" / extra)
    train = load("cifar10", "train", data_dir=tmp_path / "data")
    test = load("cifar10", "test", data_dir=tmp_path / "data")
    np.testing.assert_array_equal(train.labels, [0, 0, 1, 1, 1])
    np.testing.assert_array_equal(test.labels, [0, 0, 0, 1, 1])
    np.testing.assert_array_equal(test.images[3], written["test/cat/0.png"])


def test_upper_case_image_suffixes_are_read(tmp_path, fresh_cache):
    written = write_tree(tmp_path / "data")
    cat = tmp_path / "data" / "train" / "cat"
    (cat / "1.png").rename(cat / "1.PNG")
    Image.fromarray(written["train/cat/0.png"]).save(cat / "2.JPG")
    data = load("cifar10", "train", data_dir=tmp_path / "data")
    np.testing.assert_array_equal(data.labels, [0, 0, 1, 1, 1])
    np.testing.assert_array_equal(data.images[3], written["train/cat/1.png"])


def test_bmp_tiff_webp_and_gif_images_are_read(tmp_path, fresh_cache):
    # They were skipped without a word: a tree of .bmp files trained on none of them.
    written = write_tree(tmp_path / "data", suffix=".bmp")
    cat = tmp_path / "data" / "train" / "cat"
    Image.fromarray(written["train/cat/0.bmp"]).save(cat / "2.tif")
    Image.fromarray(written["train/cat/1.bmp"]).save(cat / "3.WebP", lossless=True)
    Image.new("RGB", (4, 3), (10, 20, 30)).save(cat / "4.gif")
    data = load("cifar10", "train", data_dir=tmp_path / "data")
    np.testing.assert_array_equal(data.labels, [0, 0, 1, 1, 1, 1, 1])
    np.testing.assert_array_equal(data.images[1], written["train/airplane/1.bmp"])
    np.testing.assert_array_equal(data.images[4], written["train/cat/0.bmp"])
    np.testing.assert_array_equal(data.images[5], written["train/cat/1.bmp"])
    np.testing.assert_array_equal(data.images[6], np.full((3, 4, 3), (10, 20, 30)))


def test_images_one_folder_too_deep_are_warned_of_on_the_command_line(tmp_path, fresh_cache,
                                                                      capsys):  # fmt: skip
    # Sorted into sub-folders of a class, they were left out of training without a word.
    written = write_tree(tmp_path / "data")
    deeper = tmp_path / "data" / "test" / "cat" / "more"
    deeper.mkdir()
    for i in range(3):
        Image.fromarray(written["test/cat/0.png"]).save(deeper / f"{i}.png")
    assert main(["data", "info", "--data-dir", str(tmp_path / "data")]) == 0
    assert capsys.readouterr().err == (
        f"jaxcifar data info: warning: {tmp_path / 'data'}/test/: skipped 3 file(s) that are "
        "not test/<class>/*.png|jpg|jpeg|bmp|gif|webp|tif|tiff images, such as "
        f"{tmp_path / 'data'}/test/cat/more/0.png\n"
    )


def test_skipped_files_are_warned_of_on_every_load_not_only_the_decoding_one(
    tmp_path, fresh_cache
):
    # A second command read the cache and trained on fewer files without a word.
    write_tree(tmp_path / "data")
    (tmp_path / "data" / "test" / "cat" / "notes.txt").write_text("skipped")
    (tmp_path / "data" / "train" / "cat" / "more").mkdir()
    (tmp_path / "data" / "train" / "cat" / "more" / "0.png").write_text("skipped")
    expected = {
        split: f"{tmp_path / 'data'}/{split}/: skipped 1 file(s) that are not {split}/<class>/"
        f"*.png|jpg|jpeg|bmp|gif|webp|tif|tiff images, such as {tmp_path / 'data'}/{split}/cat/"
        + ("notes.txt" if split == "test" else "more/0.png")
        for split in ("train", "test")
    }
    for load_number in range(2):  # the first decodes both splits, the second reads the cache
        for split in ("train", "test"):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                load("cifar10", split, data_dir=tmp_path / "data")
            assert [str(w.message) for w in caught] == [expected[split]]
    assert len(list(fresh_cache.iterdir())) == 1


def test_a_copy_read_from_the_cache_is_warned_of_by_its_own_path(tmp_path, fresh_cache,
                                                                 monkeypatch):  # fmt: skip
    # The cache serves every copy of one archive (its key is the contents): its note named
    # the first copy decoded.
    write_tree(tmp_path / "tree")
    (tmp_path / "tree" / "test" / "cat" / "notes.txt").write_text("skipped")
    tar_folder(tmp_path / "tree", tmp_path / "first.tar.gz", arcname="")
    with pytest.warns(UserWarning, match=f"^{tmp_path / 'first.tar.gz'}/test/: skipped 1 file"):
        load("cifar10", "test", data_dir=tmp_path / "first.tar.gz")
    (tmp_path / "first.tar.gz").rename(tmp_path / "copy.tar.gz")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load("cifar10", "test", data_dir=tmp_path / "copy.tar.gz")
    assert [str(w.message) for w in caught] == [
        f"{tmp_path / 'copy.tar.gz'}/test/: skipped 1 file(s) that are not test/<class>/"
        f"*.png|jpg|jpeg|bmp|gif|webp|tif|tiff images, such as {tmp_path / 'copy.tar.gz'}/test/"
        "cat/notes.txt"
    ]
    assert len(list(fresh_cache.iterdir())) == 1
    # A relative source that is also part of a word of the note ("d" of "skipped") is
    # stored where it names the path only: a folder read as "d", then renamed "tree" (it read
    # "skippetree 1 file(s)").
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tree").rename(tmp_path / "d")
    with pytest.warns(UserWarning):
        load("cifar10", "test", data_dir="d")
    (tmp_path / "d").rename(tmp_path / "tree")
    monkeypatch.setattr("jaxcifar.data.tree.read_folder", lambda *a: pytest.fail("decoded"))
    with pytest.warns(UserWarning) as warned:  # from the cache
        load("cifar10", "test", data_dir="tree")
    assert [str(w.message) for w in warned] == [
        "tree/test/: skipped 1 file(s) that are not test/<class>/*.png|jpg|jpeg|bmp|gif|webp|"
        "tif|tiff images, such as tree/test/cat/notes.txt"
    ]


@pytest.mark.parametrize("name, shown", [("two\nlines", "two\\nlines"), ("a\tb", "a\\tb"),
                                         ("a\u2028b", "a\\u2028b")])  # a line separator
def test_a_class_folder_name_with_a_control_character_is_refused(tmp_path, fresh_cache, name,
                                                                  shown):  # fmt: skip
    # It was printed as it is: predict's line for one image split in two, data info's columns
    # broke, and data show warned twice of a glyph missing from its fonts.
    write_tree(tmp_path / "data", classes=("cat", name))
    with pytest.raises(DataError) as refused:
        load("cifar10", "train", data_dir=tmp_path / "data")
    assert str(refused.value) == (
        f"{tmp_path / 'data'}/train/{shown}: class folder name holds a control character (a "
        "newline, a tab), which would break the lines and columns class names are printed "
        "in; rename it"
    )


def test_class_names_with_zero_width_joiners_and_combining_accents_are_read(
    tmp_path, fresh_cache
):
    # Characters Python calls unprintable but that are part of a word's text.
    names = ("man\u200dcook", "ne\u200cmi", "cafe\u0301")  # ZWJ, Persian ZWNJ, accent
    write_tree(tmp_path / "data", classes=names)
    data = load("cifar10", "train", data_dir=tmp_path / "data")
    assert data.class_names == ("cafe\u0301".replace("e\u0301", "\u00e9"), *sorted(names[:2]))


def test_a_fifo_among_the_images_is_named_not_read(tmp_path, fresh_cache, ends_within_a_minute):
    # Its read blocked the load for ever.
    write_tree(tmp_path / "data")
    os.mkfifo(tmp_path / "data" / "train" / "cat" / "2.png")
    with pytest.raises(DataError) as refused:
        load("cifar10", "train", data_dir=tmp_path / "data")
    assert str(refused.value) == (
        f"{tmp_path / 'data'}/train/cat/2.png: cannot read (not a regular file)"
    )


CAFE_NFC, CAFE_NFD = "caf\u00e9", "cafe\u0301"  # one name, its accent encoded two ways


def test_class_folders_named_alike_in_other_unicode_forms_are_one_class(tmp_path, fresh_cache):
    # A test/ copied from macOS (NFD) beside a train/ made elsewhere (NFC) was refused as
    # "must hold the same class folders", listing two names that printed identically.
    write_tree(tmp_path / "data", classes=("bistro", CAFE_NFC))
    (tmp_path / "data" / "test" / CAFE_NFC).rename(tmp_path / "data" / "test" / CAFE_NFD)
    data = load("cifar10", "test", data_dir=tmp_path / "data")
    assert data.class_names == ("bistro", CAFE_NFC)
    np.testing.assert_array_equal(data.labels, [0, 0, 1, 1])


def test_two_class_folders_of_one_name_in_two_unicode_forms_are_refused(tmp_path, fresh_cache):
    write_tree(tmp_path / "data", classes=(CAFE_NFC, CAFE_NFD))
    with pytest.raises(DataError, match="two class folders are named 'caf\u00e9', with its "
                       "accents encoded two ways"):  # fmt: skip
        load("cifar10", "train", data_dir=tmp_path / "data")


def test_cifar10_tree_with_digit_class_folders_is_not_refused_as_mnist(tmp_path, fresh_cache):
    write_tree(tmp_path, per_class=1, size=(32, 32), classes=tuple("0123456789"),
               fill=lambda rng, split, digit: (digit, 0, 0))  # fmt: skip
    data = load("cifar10", "test", data_dir=tmp_path)
    assert data.class_names == tuple("0123456789") and data.images.shape == (10, 32, 32, 3)
    np.testing.assert_array_equal(data.labels, np.arange(10))
    np.testing.assert_array_equal(data.images[:, 0, 0, 0], np.arange(10))


def test_an_unsorted_tarball_loads_in_the_same_order_as_the_folder(tmp_path, fresh_cache):
    # GNU tar may store members unsorted; images must still come in file-name order.
    written = write_tree(tmp_path / "data", per_class=3)
    archive = tmp_path / "images.tar"
    with tarfile.open(archive, "w") as tar:
        for name in sorted(written, reverse=True):
            tar.add(tmp_path / "data" / name, arcname=name)
    with tarfile.open(archive) as tar:
        assert tar.getnames()[0] == "train/cat/2.png"
    for split in ("train", "test"):
        folder = load("cifar10", split, data_dir=tmp_path / "data")
        packed = load("cifar10", split, data_dir=archive)
        np.testing.assert_array_equal(packed.images, folder.images)
        np.testing.assert_array_equal(packed.labels, folder.labels)
        np.testing.assert_array_equal(packed.images[1], written[f"{split}/airplane/1.png"])


@pytest.mark.parametrize("arcname", ["", ".", "cifar10-images", "./cifar10-images"])
def test_tarball_with_or_without_top_folder(tmp_path, fresh_cache, arcname):
    written = write_tree(tmp_path / "tree")
    archive = tmp_path / "cifar10-small.tar.gz"
    tar_folder(tmp_path / "tree", archive, arcname)
    for data_dir in (tmp_path, archive):  # found by name in a folder, or given directly
        test = load("cifar10", "test", data_dir=data_dir)
        assert test.source == str(archive)
        np.testing.assert_array_equal(test.images[0], written["test/airplane/0.png"])


def test_cifar10_class_names_come_in_the_canonical_order_whatever_order_the_folders_list(
    tmp_path, fresh_cache
):
    classes = (
        "truck", "airplane", "cat", "automobile", "bird", "deer", "dog", "frog", "horse", "ship"
    )
    write_tree(tmp_path, per_class=1, size=(2, 2), classes=classes, fill=0, suffix=".jpg")
    data = load("cifar10", "test", data_dir=tmp_path)
    assert data.class_names == CIFAR10_CLASSES
    np.testing.assert_array_equal(data.labels, np.arange(10))


def test_mnist_style_trees_decode_to_one_channel(tmp_path, fresh_cache):
    written = write_tree(tmp_path / "mnist", size=(28, 28))  # RGB files: converted to luma
    data = load("mnist", "train", data_dir=tmp_path)
    assert data.images.shape == (4, 28, 28, 1)
    luma = np.asarray(Image.fromarray(written["train/airplane/0.png"]).convert("L"))
    np.testing.assert_array_equal(data.images[0, ..., 0], luma)


def test_greyscale_trees_decode_to_three_equal_channels_for_cifar10(tmp_path, fresh_cache):
    write_tree(tmp_path, per_class=1, size=(32, 32), classes=("cat", "dog"), mode="L", fill=77)
    assert np.all(load("cifar10", "test", data_dir=tmp_path).images == 77)


def grey_as_rgb(rng, split, k):
    """Pixels for RGB files of 28x28 greyscale images (MNIST exported as RGB): equal channels."""
    return rng.integers(0, 256, (28, 28, 1))


@pytest.mark.parametrize(
    "dataset, size, mode, fill, message",
    [
        ("fashion_mnist", (32, 32), "RGB", None, "colour image of 32x32 pixels, expected 28x28 "
         "for fashion_mnist; colour 32x32 images are cifar10's: is this cifar10 data\\? "
         "\\(greyscale ones of this size are read as your own\\)$"),
        ("mnist", (32, 32), "RGB", None, "colour image of 32x32 pixels, expected 28x28 for "
         "mnist; colour 32x32 images are cifar10's"),
        ("cifar10", (28, 28), "L", None, "greyscale image of 28x28 pixels, expected 32x32 for "
         "cifar10; greyscale 28x28 images are mnist or fashion_mnist's: is this mnist or "
         "fashion_mnist data\\? \\(colour ones of this size are read as your own\\)$"),
        ("cifar10", (28, 28), "RGB", grey_as_rgb, "greyscale image of 28x28 pixels"),
    ],
)  # fmt: skip
def test_a_tree_of_another_datasets_image_size_and_colour_is_refused_before_caching(
    tmp_path, fresh_cache, dataset, size, mode, fill, message
):
    write_tree(tmp_path / "data", size=size, mode=mode, fill=fill)
    archive = tmp_path / "images.tar.gz"
    tar_folder(tmp_path / "data", archive, "")
    for data_dir, where in ((tmp_path / "data", "data"), (archive, r"images\.tar\.gz")):
        with pytest.raises(DataError, match=rf"{where}/train/airplane/0\.png: {message}"):
            load(dataset, "train", data_dir=data_dir)
    assert not fresh_cache.exists() or not any(fresh_cache.iterdir())


def test_own_colour_photos_of_mnists_size_and_grey_ones_of_cifars_are_read_as_asked(
    tmp_path, fresh_cache
):
    """Only another dataset's size *and* colour is refused: 28x28 colour photos train as
    cifar10, in colour; 32x32 greyscale ones as mnist."""
    written = write_tree(tmp_path / "colour", size=(28, 28))
    colour = load("cifar10", "train", data_dir=tmp_path / "colour")
    assert colour.images.shape == (4, 28, 28, 3)
    np.testing.assert_array_equal(colour.images[0], written["train/airplane/0.png"])
    write_tree(tmp_path / "grey", size=(32, 32), mode="L")
    assert load("mnist", "test", data_dir=tmp_path / "grey").images.shape == (4, 32, 32, 1)


def test_a_tree_of_another_datasets_class_folders_is_refused_before_caching(tmp_path, fresh_cache):
    # One blank 28x28 greyscale image per class and split.
    class_tree = functools.partial(write_tree, per_class=1, size=(28, 28), mode="L", fill=0)
    data, fashion, digits = tmp_path / "data", tmp_path / "fashion", tmp_path / "digits"
    class_tree(data, classes=CIFAR10_CLASSES)
    cifar10 = r"data/train/: class folders airplane\.\.truck are cifar10's classes, not fashion_"
    with pytest.raises(DataError, match=cifar10):
        load("fashion_mnist", "train", data_dir=data)
    assert not fresh_cache.exists() or not any(fresh_cache.iterdir())
    # Fashion-MNIST's classes as folders can be (no "/" in a folder name): matched loosely.
    class_tree(fashion, classes=(
        "t-shirt_top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
        "Bag", "ankle_boot",
    ))  # fmt: skip
    named = r"class folders T-shirt/top\.\.Ankle boot are fashion_mnist's classes, not mnist's"
    with pytest.raises(DataError, match=named):
        load("mnist", "train", data_dir=fashion)
    assert len(load("fashion_mnist", "train", data_dir=fashion)) == 10
    # Digits are label numbers any dataset's tree may use: they prove nothing.
    class_tree(digits, classes=("0", "1"))
    assert len(load("fashion_mnist", "train", data_dir=digits)) == 2


def test_a_tree_of_one_class_is_refused(tmp_path, fresh_cache):
    # Cross-entropy over one class is 0 whatever the weights: train reported "test accuracy
    # 1.0000" and predict "only 1.000" for any picture, having learnt nothing.
    write_tree(tmp_path / "data", classes=("only",))
    with pytest.raises(DataError, match=re.escape(
        f"{tmp_path / 'data'}: train/ and test/ hold one class folder (only); a classifier needs "
        "at least two classes: add a folder of images of another class"
    )):  # fmt: skip
        load("cifar10", "train", data_dir=tmp_path / "data")


@pytest.mark.parametrize("packed", [False, True])
def test_hidden_files_and_folders_are_ignored(tmp_path, fresh_cache, packed):
    written = write_tree(tmp_path / "data")
    hidden_folder = tmp_path / "data" / "train" / ".ipynb_checkpoints"
    hidden_folder.mkdir()
    Image.new("RGB", (4, 3)).save(hidden_folder / "0.png")  # would be a class of its own
    (tmp_path / "data" / "test" / ".empty").mkdir()  # would be an empty class folder
    (tmp_path / "data" / "train" / "cat" / ".DS_Store").write_bytes(b"\0Bud1")
    (tmp_path / "data" / "train" / "cat" / "._0.png").write_bytes(b"\0\5\26\7 macOS metadata")
    data_dir = tmp_path / "data"
    if packed:
        data_dir = tmp_path / "images.tar.gz"
        tar_folder(tmp_path / "data", data_dir, "top")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # not even warned of as files skipped
        data = load("cifar10", "train", data_dir=data_dir)
    assert data.class_names == ("airplane", "cat")
    np.testing.assert_array_equal(data.labels, [0, 0, 1, 1])
    np.testing.assert_array_equal(data.images[2], written["train/cat/0.png"])
    if not packed:  # nor part of the folder's fingerprint: changing them keeps the cache entry
        (hidden_folder / "1.png").write_bytes(b"notebook noise")
        load("cifar10", "train", data_dir=data_dir)
        assert len(list(fresh_cache.iterdir())) == 1


@pytest.mark.parametrize("arcname", [".mydata", "."])
def test_a_tarball_of_a_hidden_folder_is_read_and_hidden_members_beside_its_splits_are_not(
    tmp_path, fresh_cache, arcname
):
    # `tar czf data.tgz .mydata`: one hidden top folder, stripped like any other. With "."
    # as the top, macOS's `._train` sits beside train/ and test/ and must not count.
    written = write_tree(tmp_path / "data")
    (tmp_path / "data" / "._train").write_bytes(b"\0\5\26\7 macOS metadata")
    tar_folder(tmp_path / "data", tmp_path / "images.tar.gz", arcname)
    data = load("cifar10", "train", data_dir=tmp_path / "images.tar.gz")
    np.testing.assert_array_equal(data.images[2], written["train/cat/0.png"])


def test_hidden_members_beside_the_top_folder_do_not_keep_it_from_being_stripped(
    tmp_path, fresh_cache
):
    # macOS tar of a folder `data` writes its metadata as `._data` beside it.
    written = write_tree(tmp_path / "data")
    metadata = tmp_path / "._data"
    metadata.write_bytes(b"\0\5\26\7 macOS metadata")
    with tarfile.open(tmp_path / "images.tar.gz", "w:gz") as archive:
        archive.add(metadata, arcname="._data")
        archive.add(tmp_path / "data", arcname="data")
    data = load("cifar10", "train", data_dir=tmp_path / "images.tar.gz")
    np.testing.assert_array_equal(data.images[2], written["train/cat/0.png"])


def test_image_of_another_size_is_named(tmp_path, fresh_cache):
    write_tree(tmp_path)
    Image.new("RGB", (5, 3)).save(tmp_path / "test" / "cat" / "1.png")
    with pytest.raises(
        DataError,
        match=r"test/cat/1\.png: image of 5x3 pixels, expected 4x3 like .*train/airplane/0\.png",
    ):
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


LATIN1_CLASS = os.fsdecode(b"chat_\xe9")  # "chat_\udce9": a Latin-1 folder name, not UTF-8
LATIN1_REFUSED = (
    "class folder name is not UTF-8 text (class names are saved in checkpoints and reports); "
    "rename it"
)


def latin1_class_tree(tmp_path: Path, packed: bool) -> tuple[Path, str]:
    """A tree with a class folder named in Latin-1 (`LATIN1_CLASS`), as a folder or a .tar.gz
    of it; returns the data dir and that class folder as messages name it."""
    write_tree(tmp_path / "data", classes=("cat", LATIN1_CLASS))
    if not packed:
        return tmp_path / "data", f"{tmp_path / 'data'}/train/chat_\\xe9"
    archive = tmp_path / "images.tar.gz"
    tar_folder(tmp_path / "data", archive, "top")
    # tarfile writes the surrogate-escaped name back as its raw bytes, as GNU tar would.
    assert b"top/train/chat_\xe9/0.png" in gzip.decompress(archive.read_bytes())
    return archive, f"{archive}/top/train/chat_\\xe9"


@pytest.mark.parametrize("packed", [False, True])
def test_a_class_folder_name_that_is_not_utf8_is_refused_before_caching(
    tmp_path, fresh_cache, packed
):
    # Before: a folder's fingerprint died encoding the name; an archive loaded, and training
    # died an epoch later saving the class names in its checkpoint.
    data_dir, folder = latin1_class_tree(tmp_path, packed)
    with pytest.raises(DataError) as error:
        load("cifar10", "train", data_dir=data_dir)
    assert str(error.value) == f"{folder}: {LATIN1_REFUSED}"
    assert not fresh_cache.exists() or not any(fresh_cache.iterdir())


@pytest.mark.parametrize("command", ["data info", "train"])
@pytest.mark.parametrize("packed", [False, True])
def test_a_class_folder_name_that_is_not_utf8_is_one_line_through_the_cli(
    tmp_path, fresh_cache, capsys, packed, command
):
    data_dir, folder = latin1_class_tree(tmp_path, packed)
    run = tmp_path / "run"
    out = ["--out", str(run)] if command == "train" else []
    assert main([*command.split(), "--dataset", "cifar10", "--data-dir", str(data_dir), *out]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"jaxcifar {command}: error: {folder}: {LATIN1_REFUSED}"
    ]
    assert not run.exists() or not any(run.iterdir())


def test_an_image_file_name_that_is_not_utf8_loads(tmp_path, fresh_cache):
    # Only class names are kept, so any file name will do; before, the folder's fingerprint
    # died encoding this one.
    written = write_tree(tmp_path)
    cat = tmp_path / "train" / "cat"
    (cat / "1.png").rename(cat / os.fsdecode(b"1_\xe9.png"))
    data = load("cifar10", "train", data_dir=tmp_path)
    assert data.class_names == ("airplane", "cat")
    np.testing.assert_array_equal(data.images[3], written["train/cat/1.png"])
    load("cifar10", "train", data_dir=tmp_path)  # fingerprinted the same way again: a cache hit
    assert len(list(fresh_cache.iterdir())) == 1


@pytest.mark.parametrize("packed", [False, True])
def test_corrupt_jpeg_is_named_without_pillows_name_for_the_bytes(tmp_path, fresh_cache, packed):
    write_tree(tmp_path / "data")
    jpeg = tmp_path / "data" / "train" / "cat" / "2.jpg"
    Image.new("RGB", (4, 3)).save(jpeg)
    jpeg.write_bytes(jpeg.read_bytes()[:20] + b"x" * 50)  # its header's markers overwritten
    data_dir = tmp_path / "data"
    if packed:
        data_dir = tmp_path / "images.tar.gz"
        tar_folder(tmp_path / "data", data_dir, "top")
    with pytest.raises(DataError) as error:
        load("cifar10", "train", data_dir=data_dir)
    assert str(error.value) == (
        f"{data_dir}/{'top/' if packed else ''}train/cat/2.jpg: not a readable image "
        "(UnidentifiedImageError: not PNG, JPEG or another format Pillow reads)"
    )


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


def test_splits_named_otherwise_are_pointed_at_train_and_test(tmp_path, fresh_cache):
    # `Train/` and `val/` read as "no cifar10 data", with no word of why.
    write_tree(tmp_path / "tree")
    (tmp_path / "tree" / "train").rename(tmp_path / "tree" / "Train")
    (tmp_path / "tree" / "test").rename(tmp_path / "tree" / "val")
    with pytest.raises(DataError) as refused:
        load("cifar10", "train", data_dir=tmp_path / "tree")
    assert str(refused.value).endswith(
        "; it holds Train/, val/: an image-folder tree's splits are named train/ and test/, in "
        "lower case (a validation split can serve as test/)"
    )


def test_class_folders_must_match_between_splits(tmp_path, fresh_cache):
    write_tree(tmp_path)
    (tmp_path / "test" / "dog").mkdir()
    Image.new("RGB", (4, 3)).save(tmp_path / "test" / "dog" / "0.png")
    with pytest.raises(DataError) as refused:  # it listed an empty "only in train/: []" too
        load("cifar10", "train", data_dir=tmp_path)
    assert str(refused.value) == (
        f"{tmp_path}: train/ and test/ must hold the same class folders (only in test/: dog): "
        "give the other split a folder of images of each class, or remove the class"
    )
    (tmp_path / "train" / "bird").mkdir()
    Image.new("RGB", (4, 3)).save(tmp_path / "train" / "bird" / "0.png")
    with pytest.raises(DataError, match=r"\(only in train/: bird; only in test/: dog\): give"):
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


def test_a_refused_tree_leaves_the_warning_filters_as_they_were(tmp_path, fresh_cache):
    # The decoding iterator sets its filters until it is closed: left open by the error, it
    # would restore them later, over whatever the caller (the CLI, pytest) set since.
    import warnings

    write_tree(tmp_path)
    Image.new("RGB", (5, 3)).save(tmp_path / "test" / "cat" / "1.png")
    before = list(warnings.filters)
    with pytest.raises(DataError, match="image of 5x3 pixels") as caught:
        load("cifar10", "train", data_dir=tmp_path)
    # While the error lives (as in the CLI's `except`), its traceback holds the iterator.
    assert warnings.filters == before, caught
