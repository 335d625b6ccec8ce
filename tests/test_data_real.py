"""The real datasets in ../shared/data, through the default cache (decoded once per machine)."""

import numpy as np

from jaxcifar.data import load
from jaxcifar.data.dataset import FASHION_MNIST_CLASSES


def test_fashion_mnist_idx(shared_data):
    train = load("fashion_mnist", "train", data_dir=shared_data)
    test = load("fashion_mnist", "test", data_dir=shared_data)
    assert train.images.shape == (60000, 28, 28, 1) and test.images.shape == (10000, 28, 28, 1)
    assert train.class_names == FASHION_MNIST_CLASSES
    for split in (train, test):
        assert np.array_equal(np.unique(split.labels), np.arange(10))
    # The published class balance: 6,000 / 1,000 of each class.
    assert np.all(np.bincount(train.labels) == 6000) and np.all(np.bincount(test.labels) == 1000)
