"""Image-folder trees: `train/<class>/*.png|jpg|jpeg` and `test/<class>/*`, as files or a tarball.

Class folders give the labels: in CIFAR-10's canonical order when the folder names are
CIFAR-10's classes, else sorted by name. Every image must decode to the same size.

Images are decoded in this process, one after another (a first load of the 60,000 CIFAR-10
JPEGs, decoded and cached, took 5 s on one machine and 23-39 s on an older one; once per
machine thanks to the cache). A process pool would need the spawn start method, since
forking is unsafe once JAX has started its threads, and spawn re-imports the caller's
`__main__`, which breaks scripts that call `load` at top level.
"""

from __future__ import annotations

import numpy as np

from jaxcifar.data.dataset import CIFAR10_CLASSES, SPLITS, Dataset
from jaxcifar.data.image_file import decode
from jaxcifar.data.tree import Tree
from jaxcifar.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
LAYOUT = "an image-folder tree train/<class>/*.png|jpg|jpeg and test/<class>/*"


def read(tree: Tree, mode: str) -> dict[str, Dataset]:
    """Both splits of an image-folder tree, decoded with Pillow.

    Args:
      tree: holds `train/<class>/<image>` and `test/<class>/<image>`; other files
        (a README, `.DS_Store`) are ignored.
      mode: the Pillow mode every image is converted to, "RGB" or "L".
    Returns:
      {"train": ..., "test": ...}: images (N, H, W, 3 or 1) uint8 sorted by class then
      file name, labels (N,) int32.
    Raises:
      DataError: a split or class folder missing or empty, an undecodable image, or an
        image whose size differs from the others.
    """
    members = {split: _class_members(tree, split) for split in SPLITS}
    train_classes, test_classes = (set(members[split]) for split in SPLITS)
    if train_classes != test_classes:
        raise DataError(
            f"{tree.where}: train/ and test/ must hold the same class folders; "
            f"only in train/: {sorted(train_classes - test_classes)}, "
            f"only in test/: {sorted(test_classes - train_classes)}"
        )
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
    first = tree.describe(paths["train"][0])
    shape = decode(tree.files[paths["train"][0]], mode, first).shape
    splits = {}
    for split in SPLITS:
        images = np.empty((len(paths[split]), *shape), np.uint8)
        for i, path in enumerate(paths[split]):
            image = decode(tree.files[path], mode, tree.describe(path))
            if image.shape != shape:
                raise DataError(
                    f"{tree.describe(path)}: image of {image.shape[1]}x{image.shape[0]} pixels, "
                    f"expected {shape[1]}x{shape[0]} like {first} (all images must share one size)"
                )
            images[i] = image
        splits[split] = Dataset(images, labels[split], class_names, tree.where)
    return splits


def _class_members(tree: Tree, split: str) -> dict[str, list[str]]:
    """{class folder name: sorted image paths} under `split/`; every class non-empty."""
    classes: dict[str, list[str]] = {
        folder.split("/")[1]: []
        for folder in tree.folders
        if folder.startswith(f"{split}/") and folder.count("/") == 1
    }
    for path in sorted(tree.files):
        parts = path.split("/")
        if len(parts) == 3 and parts[0] == split and parts[2].lower().endswith(IMAGE_SUFFIXES):
            classes.setdefault(parts[1], []).append(path)
    if not classes:
        raise DataError(f"{tree.describe(split)}/: no class folders with images; expected {LAYOUT}")
    for name, paths in classes.items():
        if not paths:
            raise DataError(
                f"{tree.describe(f'{split}/{name}')}/: empty class folder "
                f"(expected *{', *'.join(IMAGE_SUFFIXES)} images)"
            )
    return classes

