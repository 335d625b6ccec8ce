"""The real datasets in ../shared/data, through the default cache (decoded once per machine)."""

import numpy as np

from jaxcifar.data import load
from jaxcifar.data.dataset import CIFAR10_CLASSES, FASHION_MNIST_CLASSES


def test_fashion_mnist_idx(shared_data):
    train = load("fashion_mnist", "train", data_dir=shared_data)
    test = load("fashion_mnist", "test", data_dir=shared_data)
    assert train.images.shape == (60000, 28, 28, 1) and test.images.shape == (10000, 28, 28, 1)
    assert train.class_names == FASHION_MNIST_CLASSES
    for split in (train, test):
        assert np.array_equal(np.unique(split.labels), np.arange(10))
    # The published class balance: 6,000 / 1,000 of each class.
    assert np.all(np.bincount(train.labels) == 6000) and np.all(np.bincount(test.labels) == 1000)


def test_cifar10_jpeg_tarball(shared_data):
    train = load("cifar10", "train", data_dir=shared_data)
    test = load("cifar10", "test", data_dir=shared_data / "cifar10-jpeg.tar.gz")
    assert train.images.shape == (50000, 32, 32, 3) and test.images.shape == (10000, 32, 32, 3)
    assert train.class_names == CIFAR10_CLASSES and test.class_names == CIFAR10_CLASSES
    assert np.all(np.bincount(train.labels, minlength=10) == 5000)
    assert np.all(np.bincount(test.labels, minlength=10) == 1000)
    # Real photos, not a constant fill: pixel statistics near CIFAR-10's published ones.
    pixels = train.images[::50]
    assert 110 < pixels.mean() < 130 and pixels.std() > 50
