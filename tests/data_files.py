"""Small files in each format the data readers take, written byte for byte as the real
releases are: MNIST's IDX files, CIFAR-10's python (Python 2 pickles) and binary batches,
and image-folder trees. Shared by the reader tests and the reliability tests."""

import gzip
import io
import os
import pickle
import struct

import numpy as np
from PIL import Image

from jaxcifar.data.idx import IMAGES_MAGIC, LABELS_MAGIC


def idx_bytes(array: np.ndarray, magic: int) -> bytes:
    return struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape) + array.tobytes()


def write_idx_set(folder, n_train=6, n_test=4, gz=True, shape=(5, 3), seed=0):
    """Write the four MNIST files; returns {split: (images, labels)} as written."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for split, prefix, n in (("train", "train", n_train), ("test", "t10k", n_test)):
        images = rng.integers(0, 256, (n, *shape), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        for kind, array, magic in (("images-idx3", images, IMAGES_MAGIC), ("labels-idx1", labels, LABELS_MAGIC)):
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
        {b"batch_label": b"batch", b"labels": [int(x) for x in labels], b"data": rows, b"filenames": []}
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


def write_tree(root, per_class=2, size=(4, 3), seed=0):
    """train/<class>/i.png and test/<class>/i.png of random RGB pixels; returns them by path."""
    rng = np.random.default_rng(seed)
    written = {}
    for split in ("train", "test"):
        for name in TREE_CLASSES:
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
                written[f"{split}/{name}/{i}.png"] = pixels
    return written
