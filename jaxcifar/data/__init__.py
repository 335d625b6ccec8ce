"""Datasets: CIFAR-10, MNIST and Fashion-MNIST from local files or tensorflow-datasets.

`load(name, split, data_dir=None)` returns a `Dataset` of uint8 (N, H, W, C) images and
int32 labels. See `jaxcifar.data.sources` for where it looks.
"""

from jaxcifar.data.dataset import CLASS_NAMES, SPLITS, Dataset
from jaxcifar.data.preprocess import flatten, to_float
from jaxcifar.data.sources import load

__all__ = ["CLASS_NAMES", "SPLITS", "Dataset", "flatten", "load", "to_float"]
