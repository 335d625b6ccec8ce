"""Datasets: CIFAR-10, MNIST and Fashion-MNIST from local files or their official releases.

`load(name, split, data_dir=None)` returns a `Dataset` of uint8 (N, H, W, C) images and
int32 labels; `load_split` also cuts it to a seeded random subset. See
`jaxcifar.data.sources` for where they look.
"""

from jaxcifar.data.dataset import CLASS_NAMES, SPLITS, Dataset
from jaxcifar.data.preprocess import flatten, to_float
from jaxcifar.data.sources import load, load_split

__all__ = ["CLASS_NAMES", "SPLITS", "Dataset", "flatten", "load", "load_split", "to_float"]
