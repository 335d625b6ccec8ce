"""The canonical CIFAR-10 releases: the python (pickled) and the binary batches.

Both hold five training batches and one test batch of 10,000 32x32 RGB images each,
stored channel-major: 1024 red bytes, 1024 green, 1024 blue per image.
- python (`cifar-10-python.tar.gz`, `cifar-10-batches-py/`): `data_batch_1`..`5`,
  `test_batch`, each a pickled dict {b"data": (N, 3072) uint8, b"labels": [N ints]}.
- binary (`cifar-10-binary.tar.gz`, `cifar-10-batches-bin/`): `data_batch_1.bin`..`5`,
  `test_batch.bin`, each N records of 1 label byte + 3072 pixel bytes.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from jaxcifar.data import safe_pickle
from jaxcifar.data.dataset import CIFAR10_CLASSES, Dataset, check_labels
from jaxcifar.data.tree import Tree
from jaxcifar.errors import DataError

IMAGE_BYTES = 3 * 32 * 32
RECORD_BYTES = 1 + IMAGE_BYTES
PYTHON_BATCHES = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}
BINARY_BATCHES = {
    split: tuple(f"{name}.bin" for name in names) for split, names in PYTHON_BATCHES.items()
}
PYTHON_NAMES = frozenset(name for names in PYTHON_BATCHES.values() for name in names)
BINARY_NAMES = frozenset(name for names in BINARY_BATCHES.values() for name in names)
PYTHON_LAYOUT = (
    "the CIFAR-10 python release (data_batch_1..5 and test_batch, e.g. cifar-10-python.tar.gz)"
)
BINARY_LAYOUT = (
    "the CIFAR-10 binary release "
    "(data_batch_1..5.bin and test_batch.bin, e.g. cifar-10-binary.tar.gz)"
)

Batch = tuple[np.ndarray, np.ndarray]  # (N, 32, 32, 3) uint8 images, (N,) int32 labels


def parse_python_batch(data: bytes, where: str) -> Batch:
    """One pickled batch -> (N, 32, 32, 3) uint8 images, (N,) int32 labels; no pickle code runs."""
    batch = safe_pickle.loads(data, where)
    if not isinstance(batch, dict):
        raise DataError(
            f"{where}: expected a pickled dict with data and labels, got {type(batch).__name__}"
        )
    # Python 2 wrote the keys as `str`, which unpickle as bytes; accept Python 3 `str` keys too.
    fields = {
        key.decode("latin-1") if isinstance(key, bytes) else key: value
        for key, value in batch.items()
    }
    pixels, labels = fields.get("data"), fields.get("labels")
    expected = f"expected data as a (N, {IMAGE_BYTES}) uint8 array"
    if not isinstance(pixels, np.ndarray):
        raise DataError(f"{where}: {expected}, found {type(pixels).__name__}")
    if pixels.dtype != np.uint8 or pixels.shape[1:] != (IMAGE_BYTES,) or not len(pixels):
        raise DataError(f"{where}: {expected}, found {pixels.shape} {pixels.dtype}")
    try:
        labels = np.asarray(labels) if isinstance(labels, list | np.ndarray) else None
    except ValueError:  # a ragged list
        labels = None
    if labels is None or labels.ndim != 1 or (labels.size and labels.dtype.kind not in "iu"):
        raise DataError(f"{where}: expected labels as a list of integers")
    if len(labels) != len(pixels):
        raise DataError(f"{where}: {len(pixels)} images but {len(labels)} labels")
    check_labels(labels, len(CIFAR10_CLASSES), where)
    return _to_nhwc(pixels), labels.astype(np.int32)


def parse_binary_batch(data: bytes, where: str) -> Batch:
    """One binary batch -> (N, 32, 32, 3) uint8 images, (N,) int32 labels."""
    if not data or len(data) % RECORD_BYTES:
        raise DataError(
            f"{where}: {len(data)} bytes is not a whole number of {RECORD_BYTES}-byte records "
            f"(1 label byte + {IMAGE_BYTES} pixel bytes); truncated?"
        )
    records = np.frombuffer(data, np.uint8).reshape(-1, RECORD_BYTES)
    labels = records[:, 0].astype(np.int32)
    check_labels(labels, len(CIFAR10_CLASSES), where)
    return _to_nhwc(records[:, 1:]), labels


def read_python(tree: Tree) -> dict[str, Dataset]:
    """Both splits of the python release in `tree`."""
    return _read(tree, PYTHON_BATCHES, parse_python_batch, PYTHON_LAYOUT)


def read_binary(tree: Tree) -> dict[str, Dataset]:
    """Both splits of the binary release in `tree`."""
    return _read(tree, BINARY_BATCHES, parse_binary_batch, BINARY_LAYOUT)


def _read(
    tree: Tree,
    batches: dict[str, tuple[str, ...]],
    parse: Callable[[bytes, str], Batch],
    layout: str,
) -> dict[str, Dataset]:
    missing = [name for names in batches.values() for name in names if name not in tree.files]
    if missing:
        raise DataError(f"{tree.where}: missing {', '.join(missing)}; expected {layout}")
    splits = {}
    for split, names in batches.items():
        parsed = [parse(tree.files[name], tree.describe(name)) for name in names]
        images, labels = (np.concatenate(arrays) for arrays in zip(*parsed))
        splits[split] = Dataset(images, labels, CIFAR10_CLASSES, tree.where)
    return splits


def _to_nhwc(pixels: np.ndarray) -> np.ndarray:
    """(N, 3072) channel-major rows -> (N, 32, 32, 3), contiguous."""
    return np.ascontiguousarray(pixels.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
