"""MNIST-format IDX files, raw or gzipped: the format of MNIST and Fashion-MNIST.

An IDX file is a big-endian header, the magic number 0x0000TTDD (TT the element type,
0x08 = uint8; DD the number of dimensions) and then DD uint32 sizes, followed by the
elements in row-major order. Images are (N, rows, cols), labels (N,).
"""

from __future__ import annotations

import gzip
import math
import zlib

import numpy as np

from jaxcifar.data.dataset import Dataset, check_labels
from jaxcifar.data.tree import Tree
from jaxcifar.errors import DataError

IMAGES_MAGIC = 0x00000803  # uint8, 3 dimensions
LABELS_MAGIC = 0x00000801  # uint8, 1 dimension
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# Every name a folder of IDX files may hold: each file raw or gzipped.
NAMES = frozenset(stem + ext for stems in FILES.values() for stem in stems for ext in ("", ".gz"))
LAYOUT = (
    "MNIST-format IDX files train-images-idx3-ubyte, train-labels-idx1-ubyte, "
    "t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte (each raw or .gz)"
)


def parse(data: bytes, magic: int, where: str) -> np.ndarray:
    """Decode one IDX file's bytes.

    Args:
      data: the whole (decompressed) file.
      magic: the expected magic number, `IMAGES_MAGIC` or `LABELS_MAGIC`.
      where: the file's name, for error messages.
    Returns:
      uint8 array of the header's dims, (N, rows, cols) or (N,); every dim > 0.
    Raises:
      DataError: wrong magic, a zero dim, or a size that does not match the dims.
    """
    if len(data) < 4:
        raise DataError(f"{where}: {len(data)} bytes, too short for an IDX header")
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        raise DataError(f"{where}: IDX magic number 0x{found:08x}, expected 0x{magic:08x}")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{where}: truncated IDX header ({len(data)} of {header} bytes)")
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if 0 in dims:
        raise DataError(f"{where}: IDX dims {dims} hold no data")
    size = header + math.prod(dims)
    if len(data) != size:
        problem = "truncated" if len(data) < size else "has trailing bytes"
        raise DataError(f"{where}: {problem}: dims {dims} need {size} bytes, file has {len(data)}")
    return np.frombuffer(data, np.uint8, offset=header).reshape(dims)


def read(tree: Tree, class_names: tuple[str, ...]) -> dict[str, Dataset]:
    """Both splits from the four IDX files in `tree`.

    Returns:
      {"train": ..., "test": ...}; images (N, rows, cols, 1) uint8, labels (N,) int32.
    Raises:
      DataError naming the file: a malformed file, images and labels of different counts,
        labels outside the classes, or train and test images of different sizes.
    """
    splits, images_names = {}, {}
    for split, (images_stem, labels_stem) in FILES.items():
        images_name, images_data = _file(tree, images_stem)
        images_names[split] = images_name
        labels_name, labels_data = _file(tree, labels_stem)
        images = parse(images_data, IMAGES_MAGIC, images_name)
        labels = parse(labels_data, LABELS_MAGIC, labels_name).astype(np.int32)
        if len(images) != len(labels):
            raise DataError(
                f"{images_name} holds {len(images)} images "
                f"but {labels_name} holds {len(labels)} labels"
            )
        check_labels(labels, len(class_names), labels_name)
        # A copy: frombuffer views of `bytes` are read-only, cached loads are not.
        splits[split] = Dataset(images[..., np.newaxis].copy(), labels, class_names, tree.where)
    sizes = {split: splits[split].images.shape[1:3] for split in FILES}
    if sizes["train"] != sizes["test"]:  # a model trained on one could not test on the other
        raise DataError(
            f"{images_names['test']} holds images of (H, W) {sizes['test']}, but "
            f"{images_names['train']} holds {sizes['train']}: both splits must share one size"
        )
    return splits


def _file(tree: Tree, stem: str) -> tuple[str, bytes]:
    """The described name and decompressed bytes of `stem` or `stem.gz`."""
    for name in (stem, stem + ".gz"):
        if name in tree.files:
            where = tree.describe(name)
            data = tree.files[name]
            if name.endswith(".gz"):
                try:
                    data = gzip.decompress(data)
                except (OSError, EOFError, zlib.error) as error:
                    raise DataError(f"{where}: not a valid gzip file ({error})") from None
            return where, data
    raise DataError(f"{tree.where}: missing {stem} (or {stem}.gz); expected {LAYOUT}")
