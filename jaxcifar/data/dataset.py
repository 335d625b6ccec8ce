"""The in-memory dataset every loader returns, and the class names of the known datasets."""

from __future__ import annotations

import dataclasses
import unicodedata
from collections.abc import Sequence

import numpy as np

from jaxcifar.errors import ConfigError, DataError
from jaxcifar.metrics import out_of_range

CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
MNIST_CLASSES = tuple(str(digit) for digit in range(10))
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
CLASS_NAMES = {
    "cifar10": CIFAR10_CLASSES,
    "mnist": MNIST_CLASSES,
    "fashion_mnist": FASHION_MNIST_CLASSES,
}
# (H, W, C) of every image of each dataset's canonical release.
IMAGE_SHAPES = {"cifar10": (32, 32, 3), "mnist": (28, 28, 1), "fashion_mnist": (28, 28, 1)}
SPLITS = ("train", "test")


def is_count(n: object) -> bool:
    """Whether `n` is a positive integer (a NumPy one too, not a bool)."""
    return not isinstance(n, bool) and isinstance(n, int | np.integer) and n > 0


def check_count(n: int, name: str, error: type[Exception] = ConfigError) -> None:
    """Raise `error` naming `name` unless `n` is a positive integer (`is_count`): as a slice
    bound, 0 would keep no example and -5 all but five; as a step or a size, 2.5 fails deep
    in NumPy or rounds without a word."""
    if not is_count(n):
        raise error(f"{name} must be a positive integer; got {n!r}")


def class_text(name: str) -> str:
    """A class name as text, in Unicode NFC (each accented letter one character): macOS writes
    a folder "café" as "cafe" + a combining accent (NFD), most other systems as NFC, and both
    name one class."""
    return unicodedata.normalize("NFC", name)


def check_labels(labels: np.ndarray, num_classes: int, where: str) -> None:
    """Raise a DataError naming `where` unless every label lies in [0, num_classes)."""
    if problem := out_of_range(labels, num_classes):
        raise DataError(f"{where}: labels {problem}")


@dataclasses.dataclass(frozen=True)
class Dataset:
    """One split of an image-classification dataset, held in host memory.

    Attributes:
      images: (N, H, W, C) uint8, C = 3 for CIFAR-10 and 1 for MNIST-style data.
      labels: (N,) int32 in [0, len(class_names)).
      class_names: the name of each label, in label order.
      source: where the arrays came from (a path), for reports.
      notes: what the reader left out of the source, to warn of each time the split is
        loaded (files of an image folder that are not its images), whether it was decoded
        or read from the cache.
    """

    images: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]
    source: str = ""
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        where = self.source or "dataset"
        if self.images.dtype != np.uint8 or self.images.ndim != 4:
            raise DataError(
                f"{where}: expected images as (N, H, W, C) uint8, "
                f"got {self.images.shape} {self.images.dtype}"
            )
        if self.labels.shape != (self.images.shape[0],):
            raise DataError(
                f"{where}: {self.images.shape[0]} images but labels of shape {self.labels.shape}"
            )
        if self.labels.dtype != np.int32:
            raise DataError(f"{where}: expected int32 labels, got {self.labels.dtype}")
        check_labels(self.labels, len(self.class_names), where)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def mismatch(
        self, image_shape: Sequence[int], class_names: Sequence[str]
    ) -> tuple[str, tuple, tuple] | None:
        """(what, found, expected) for the first of this set's image shape (H, W, C) and
        class names (in label order) that is not `image_shape` / `class_names`, else None:
        data a model was not built for (another size fails deep in JAX, other names
        silently mislabel every class). Names are compared as text (Unicode NFC): a checkpoint
        may hold a name as macOS wrote its folder, "cafe" + a combining accent."""
        names = tuple(map(class_text, self.class_names)), tuple(map(class_text, class_names))
        for what, found, expected in (
            ("image shape (H, W, C)", tuple(self.images.shape[1:]), tuple(image_shape)),
            ("classes", *names),
        ):
            if found != expected:
                return what, found, expected
        return None

    def subset(self, n: int, seed: int = 0) -> Dataset:
        """A random subset of `n` > 0 examples (all of them when n >= len), in a fixed order.

        Loaders return class-sorted data (image folders are), so the first n would be one
        class: a seeded permutation keeps every class in a small subset.

        Raises:
          ConfigError: `n` is not a positive integer.
        """
        check_count(n, "subset size n")
        if n >= len(self):
            return self
        index = np.sort(np.random.default_rng(seed).permutation(len(self))[:n])
        return dataclasses.replace(self, images=self.images[index], labels=self.labels[index])
