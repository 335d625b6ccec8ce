"""Image-folder trees: `train/<class>/<image>` and `test/<class>/<image>`, as files or a tarball.

Class folders give the labels: in CIFAR-10's canonical order when the folder names are
CIFAR-10's classes, else sorted by name. Every image must decode to the same size. Nothing
in a tree says which dataset it holds, so one that looks like another known dataset than
the one asked for (its class names, its image size) is refused: see `read`.

Images are decoded in this process, one after another (a first load of the 60,000 CIFAR-10
JPEGs, decoded and cached, took 5 s on one machine and 23-39 s on an older one; once per
machine thanks to the cache). A process pool would need the spawn start method, since
forking is unsafe once JAX has started its threads, and spawn re-imports the caller's
`__main__`, which breaks scripts that call `load` at top level.
"""

from __future__ import annotations

import contextlib
import os
import re
import unicodedata
from collections.abc import Callable, Iterable

import numpy as np

from jaxcifar.data.dataset import (
    CIFAR10_CLASSES, CLASS_NAMES, IMAGE_SHAPES, SPLITS, Dataset, class_text,
)
from jaxcifar.data.image_file import decode_all
from jaxcifar.data.tree import Tree
from jaxcifar.errors import DataError, one_line

# The formats an image dataset is stored in that Pillow decodes (WebP and TIFF with the
# libraries its wheels bundle; a GIF's first frame).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
_IMAGES = "*." + "|".join(suffix[1:] for suffix in IMAGE_SUFFIXES)
LAYOUT = f"an image-folder tree train/<class>/* and test/<class>/* of {_IMAGES} images"


def read(tree: Tree, name: str) -> dict[str, Dataset]:
    """Both splits of an image-folder tree of dataset `name`, decoded with Pillow.

    Refused before any image but the first is decoded (so before anything is cached): class
    folders that are another dataset's classes (CIFAR-10's read as fashion_mnist), and a
    first image of another known dataset's size and colour that is not `name`'s (32x32 colour
    read as mnist, 28x28 greyscale as cifar10; `IMAGE_SHAPES`). Other class names, sizes and
    colours are the user's own data (28x28 colour photos train as cifar10 in colour). Every
    image becomes RGB for cifar10 and greyscale (Pillow's "L", ITU-R 601-2 luma) for mnist
    and fashion_mnist, so an RGB export of MNIST loads as MNIST.

    Args:
      tree: holds `train/<class>/<image>` and `test/<class>/<image>` (suffixes in
        `IMAGE_SUFFIXES`, in any case). Other files beside the splits (a README) are ignored;
        those inside a split that are not such images (`train/cat/notes.txt`, a nested
        `train/cat/more/1.png`) are skipped, and named in that split's `Dataset.notes`;
        hidden ones (`.DS_Store`, `.ipynb_checkpoints/`) are not in a `Tree`.
      name: the dataset asked for, a key of `IMAGE_SHAPES`.
    Returns:
      {"train": ..., "test": ...}: images (N, H, W, 3 for cifar10 or 1) uint8 sorted by class
      then file name, labels (N,) int32.
    Raises:
      DataError: a split or class folder missing or empty, one class only, an undecodable
        image, an image whose size differs from the others, or a tree that looks like another
        dataset.
    """
    members, notes = {}, {}
    for split in SPLITS:
        members[split], notes[split] = _class_members(tree, split)
    train_classes, test_classes = (set(members[split]) for split in SPLITS)
    if train_classes != test_classes:
        only = [f"only in {split}/: {', '.join(sorted(extra))}" for split, extra in (
            ("train", train_classes - test_classes), ("test", test_classes - train_classes),
        ) if extra]  # fmt: skip
        raise DataError(
            f"{tree.where}: train/ and test/ must hold the same class folders ({'; '.join(only)}):"
            " give the other split a folder of images of each class, or remove the class"
        )
    if len(train_classes) < 2:  # its loss is 0 whatever the weights: "100%" without learning
        raise DataError(
            f"{tree.where}: train/ and test/ hold one class folder ({', '.join(train_classes)}); "
            "a classifier needs at least two classes: add a folder of images of another class"
        )
    _check_classes(tree, name, train_classes)
    if train_classes == set(CIFAR10_CLASSES):
        class_names = CIFAR10_CLASSES
    else:
        class_names = tuple(sorted(train_classes))
    paths = {split: [path for c in class_names for path in members[split][c]] for split in SPLITS}
    labels = {
        split: np.repeat(
            np.arange(len(class_names), dtype=np.int32),
            [len(members[split][c]) for c in class_names],
        )
        for split in SPLITS
    }
    mode = "RGB" if IMAGE_SHAPES[name][2] == 3 else "L"
    ordered = [path for split in SPLITS for path in paths[split]]
    sources = ((tree.files[path], tree.describe(path)) for path in ordered)
    # Closed as an error leaves the loop, not when collected: until then its warning filters
    # stay set, and would be restored later over whatever the caller set since.
    with contextlib.closing(decode_all(sources, mode)) as images:
        first, first_image = tree.describe(ordered[0]), next(images)
        shape = first_image.shape
        # Every other image must have the first one's size.
        _check_size(first, name, shape, lambda: _is_colour(tree.files[ordered[0]], first))
        pixels = np.empty((len(ordered), *shape), np.uint8)
        pixels[0] = first_image
        for i, image in enumerate(images, start=1):
            if image.shape != shape:
                raise DataError(
                    f"{tree.describe(ordered[i])}: image of {image.shape[1]}x{image.shape[0]} "
                    f"pixels, expected {shape[1]}x{shape[0]} like {first} (all images must "
                    "share one size)"
                )
            pixels[i] = image
    train_images, test_images = np.split(pixels, [len(paths["train"])])
    return {
        "train": Dataset(train_images, labels["train"], class_names, tree.where, notes["train"]),
        "test": Dataset(test_images, labels["test"], class_names, tree.where, notes["test"]),
    }


def _check_classes(tree: Tree, name: str, classes: set[str]) -> None:
    """Raise DataError when the class folders are another dataset's classes than `name`'s.

    Names are compared in lower case without punctuation or spaces, since no folder can be
    called "T-shirt/top". MNIST's classes, the digits, prove nothing: a tree of any dataset
    may name its class folders by label number.
    """
    folded = _folded(classes)
    for other, names in CLASS_NAMES.items():
        if other != name and not all(n.isdigit() for n in names) and folded == _folded(names):
            raise DataError(
                f"{tree.describe('train')}/: class folders {names[0]}..{names[-1]} are "
                f"{other}'s classes, not {name}'s: is this {other} data?"
            )


def _folded(names: Iterable[str]) -> set[str]:
    """{"T-shirt/top", "Ankle boot"} -> {"tshirttop", "ankleboot"}."""
    return {re.sub(r"[^0-9a-z]", "", n.lower()) for n in names}


def _check_size(where: str, name: str, shape: tuple[int, ...],
                is_colour: Callable[[], bool]) -> None:  # fmt: skip
    """Raise DataError when an (H, W, C) image `shape` of colour `is_colour()` (asked only
    of another known dataset's size) is another known dataset's size and colour, not
    `name`'s."""
    height, width = shape[:2]
    expected_height, expected_width, _ = IMAGE_SHAPES[name]
    if (height, width) == (expected_height, expected_width):
        return
    others = [other for other, known in IMAGE_SHAPES.items() if known[:2] == (height, width)]
    if not others:
        return
    colour = is_colour()
    others = [other for other in others if (IMAGE_SHAPES[other][2] == 3) == colour]
    if others:
        owners = " or ".join(others)
        kind, own = ("colour", "greyscale") if colour else ("greyscale", "colour")
        raise DataError(
            f"{where}: {kind} image of {width}x{height} pixels, expected {expected_width}x"
            f"{expected_height} for {name}; {kind} {width}x{height} images are {owners}'s: is "
            f"this {owners} data? ({own} ones of this size are read as your own)"
        )


def _is_colour(source: bytes, where: str) -> bool:
    """Whether an image file's pixels, read as RGB, differ between channels anywhere (those
    of a greyscale image saved as RGB do not)."""
    (rgb,) = decode_all([(source, where)], "RGB")
    return bool(np.any(rgb != rgb[..., :1]))


def _class_members(tree: Tree, split: str) -> tuple[dict[str, list[str]], tuple[str, ...]]:
    """{class folder name, in Unicode NFC: sorted image paths} under `split/`, every class
    non-empty and named in UTF-8 text; and the note of other files under `split/`, which are
    not read: a user who put images one folder deeper, or in another format, must not train
    on fewer without a word."""
    classes: dict[str, list[str]] = {
        folder.split("/")[1]: []
        for folder in tree.folders
        if folder.startswith(f"{split}/") and folder.count("/") == 1
    }
    skipped, notes = [], ()
    for path in sorted(tree.files):
        parts = path.split("/")
        if parts[0] != split:
            continue
        if len(parts) == 3 and parts[2].lower().endswith(IMAGE_SUFFIXES):
            classes.setdefault(parts[1], []).append(path)
        else:
            skipped.append(path)
    if skipped:
        notes = (
            f"{tree.describe(split)}/: skipped {len(skipped)} file(s) that are not "
            f"{split}/<class>/{_IMAGES} images, such as {_printable(tree.describe(skipped[0]))}",
        )
    if not classes:
        raise DataError(f"{tree.describe(split)}/: no class folders with images; expected {LAYOUT}")
    by_text: dict[str, list[str]] = {}
    for name, paths in classes.items():
        if not _is_utf8(name):
            raise DataError(
                f"{_printable(tree.describe(f'{split}/{name}'))}: class folder name is not UTF-8 "
                "text (class names are saved in checkpoints and reports); rename it"
            )
        if _breaks_lines(name):
            raise DataError(
                f"{one_line(tree.describe(f'{split}/{name}'))}: class folder name holds a "
                "control character (a newline, a tab), which would break the lines and "
                "columns class names are printed in; rename it"
            )
        if not paths:
            raise DataError(
                f"{tree.describe(f'{split}/{name}')}/: empty class folder "
                f"(expected {_IMAGES} images)"
            )
        text = class_text(name)  # one name, one class, however its accents are encoded
        if text in by_text:
            raise DataError(
                f"{tree.describe(split)}/: two class folders are named {text!r}, with its "
                "accents encoded two ways (Unicode NFC and NFD): merge them or rename one"
            )
        by_text[text] = paths
    return by_text, notes


def _is_utf8(name: str) -> bool:
    """Whether a file name was valid UTF-8: one that was not (a Latin-1 b"chat_\\xe9") reads
    as a str holding surrogates ("chat_\\udce9"), which no UTF-8 text file or msgpack takes."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _breaks_lines(name: str) -> bool:
    """Whether `name` holds a control character or a line or paragraph separator: a class name
    is printed as one word of a line (`predict`, `evaluate`, `data info`). Other characters
    Python calls unprintable (a zero-width joiner in an emoji, a Persian word's zero-width
    non-joiner) are part of the name's text."""
    return any(unicodedata.category(char) in ("Cc", "Zl", "Zp") for char in name)


def _printable(path: str) -> str:
    """`path` with each byte that is not UTF-8 written as \\xNN ("train/chat_\\xe9"), as Python
    writes it on stderr, so a message holding it can go to any stream or file."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")
