"""Small files in each format the data readers take, written byte for byte as the real
releases are: MNIST's IDX files, CIFAR-10's python (Python 2 pickles) and binary batches,
image-folder trees and single images; and hand edits of the msgpack files runs save.
Shared by the reader tests and the reliability tests."""

import gzip
import io
import os
import pickle
import struct
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from jaxcifar.data.idx import IMAGES_MAGIC, LABELS_MAGIC


def idx_bytes(array: np.ndarray, magic: int) -> bytes:
    return (
        struct.pack(">I", magic)
        + b"".join(struct.pack(">I", d) for d in array.shape)
        + array.tobytes()
    )


Draw = Callable[[np.random.Generator, int], tuple[np.ndarray, np.ndarray]]


def write_idx_set(folder, n_train=6, n_test=4, gz=True, shape=(5, 3), seed=0,
                  draw: Draw | None = None):  # fmt: skip
    """Write the four MNIST files of random `shape` images and labels, or of the uint8
    (images (n, H, W), labels (n,)) `draw(rng, n)` gives; returns {split: (images, labels)}."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for split, prefix, n in (("train", "train", n_train), ("test", "t10k", n_test)):
        if draw is None:
            images = rng.integers(0, 256, (n, *shape), dtype=np.uint8)
            labels = rng.integers(0, 10, n, dtype=np.uint8)
        else:
            images, labels = draw(rng, n)
        for kind, array, magic in (
            ("images-idx3", images, IMAGES_MAGIC),
            ("labels-idx1", labels, LABELS_MAGIC),
        ):
            data = idx_bytes(array, magic)
            name = f"{prefix}-{kind}-ubyte"
            if gz:
                (folder / f"{name}.gz").write_bytes(gzip.compress(data))
            else:
                (folder / name).write_bytes(data)
        written[split] = (images, labels)
    return written


BATCHES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


class Py2Pickler(pickle._Pickler):
    """Writes bytes and str as Python 2's `str` (SHORT_BINSTRING / BINSTRING), like the real
    CIFAR-10 files: their keys, their arrays' bytes and numpy's dtype spec ("u1") alike."""

    def save_bytes(self, obj):
        data = obj.encode("latin-1") if isinstance(obj, str) else obj
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch = {**pickle._Pickler.dispatch, bytes: save_bytes, str: save_bytes}


def py2_dumps(obj) -> bytes:
    """A protocol-2 pickle as Python 2 and numpy 1 wrote the real files."""
    buffer = io.BytesIO()
    Py2Pickler(buffer, protocol=2).dump(obj)
    return buffer.getvalue().replace(b"numpy._core.multiarray", b"numpy.core.multiarray")


def python_batch(images, labels) -> bytes:
    """A batch exactly as in cifar-10-python.tar.gz."""
    rows = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
    return py2_dumps(
        {
            b"batch_label": b"batch",
            b"labels": [int(x) for x in labels],
            b"data": rows,
            b"filenames": [],
        }
    )


def binary_batch(images, labels) -> bytes:
    rows = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
    return np.concatenate([labels[:, None].astype(np.uint8), rows], axis=1).tobytes()


def make_batches(seed=0, n=3):
    rng = np.random.default_rng(seed)
    return {
        name: (rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, n))
        for name in BATCHES
    }


def write_release(folder, batches, encode, suffix=""):
    folder.mkdir(parents=True)
    for name, (images, labels) in batches.items():
        (folder / f"{name}{suffix}").write_bytes(encode(images, labels))
    (folder / "batches.meta").write_bytes(b"unused")


class RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


TREE_CLASSES = ("cat", "airplane")  # not CIFAR-10's full set, so sorted: airplane, cat


Fill = Callable[[np.random.Generator, str, int], Any]


def write_tree(
    root: Path, per_class: int | tuple[int, int] = 2, size: tuple[int, int] = (4, 3), seed=0,
    classes: Sequence[str] = TREE_CLASSES, mode="RGB", fill: Fill | int | tuple | None = None,
    suffix=".png",
) -> dict[str, np.ndarray]:
    """train/<class>/<i><suffix> and test/<class>/<i><suffix>: `per_class` images a class
    (or a (train, test) pair of counts), size = (width, height), in `mode` "RGB" or "L".
    Their pixels are random, `fill`, or `fill(rng, split, k)` for the k-th of `classes`:
    anything that broadcasts to (height, width, 3) or (height, width). Returns them by path."""
    rng = np.random.default_rng(seed)
    counts = (per_class, per_class) if isinstance(per_class, int) else per_class
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    written = {}
    for split, count in zip(("train", "test"), counts):
        for k, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                if fill is None:
                    value = rng.integers(0, 256, shape, dtype=np.uint8)
                else:
                    value = fill(rng, split, k) if callable(fill) else fill
                pixels = np.full(shape, value, np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}{suffix}")
                written[f"{split}/{name}/{i}{suffix}"] = pixels
    return written


def grey_png(width: int, height: int, *chunks: tuple[bytes, bytes]) -> bytes:
    """A PNG file whose header declares width x height 8-bit grey pixels, then the given
    (type, data) chunks, each with its length and CRC: for files Pillow does not write."""
    chunks = ((b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)), *chunks)
    return b"\x89PNG\r\n\x1a\n" + b"".join(
        struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        for kind, data in chunks
    )


def image_bytes(pixels: np.ndarray, fmt: str = "PNG") -> bytes:
    """The file Pillow writes of `pixels` ((H, W) or (H, W, C)) in its format `fmt`."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, fmt)
    return buffer.getvalue()


def rewrite_msgpack(path: Path, edit: Callable[[Any], object], source: Path | None = None) -> None:
    """Rewrite the msgpack file `path` (a checkpoint, a speedrun model) as if edited by hand:
    its document, or that of the file `source`, as flax reads it (dicts, lists, arrays), once
    `edit(document)` has changed it in place."""
    from flax import serialization

    document = serialization.msgpack_restore(Path(source or path).read_bytes())
    edit(document)
    path.write_bytes(serialization.msgpack_serialize(document))
