import subprocess
import sys

import numpy as np
import pytest
import requests
import tensorflow_datasets as tfds

from jaxcifar.data import load, tfds_source
from jaxcifar.data.dataset import CIFAR10_CLASSES
from jaxcifar.errors import DataError


@pytest.fixture
def no_data_dir(monkeypatch, fresh_cache):
    monkeypatch.delenv("JAXCIFAR_DATA_DIR", raising=False)


def test_tfds_mock_data_loads_without_tensorflow_and_is_cached(no_data_dir, monkeypatch):
    with tfds.testing.mock_data(num_examples=7):
        data = load("cifar10", "test")
        assert data.images.shape == (7, 32, 32, 3) and data.images.dtype == np.uint8
        assert data.labels.dtype == np.int32 and data.labels.max() <= 9
        assert data.class_names == CIFAR10_CLASSES and data.source == "tfds:cifar10"
        mnist = load("mnist", "train")
        assert mnist.images.shape == (7, 28, 28, 1)
        # The second load reads the cache: decoding again would fail.
        monkeypatch.setattr(tfds_source, "read", lambda *args: pytest.fail("decoded twice"))
        again = load("cifar10", "test")
    np.testing.assert_array_equal(again.images, data.images)
    assert "tensorflow" not in sys.modules


def test_offline_download_failure_names_local_options(no_data_dir, monkeypatch):
    def offline(*args, **kwargs):
        raise requests.exceptions.ConnectionError("Failed to resolve 'storage.googleapis.com'")

    monkeypatch.setattr(tfds, "data_source", offline)
    with pytest.raises(DataError) as error:
        load("fashion_mnist", "train")
    message = str(error.value)
    assert message.startswith("could not get fashion_mnist from tensorflow-datasets (ConnectionError")
    assert "--data-dir" in message and "$JAXCIFAR_DATA_DIR" in message
    assert "train-images-idx3-ubyte" in message and "train/<class>" in message


def test_importing_the_package_does_not_import_tfds():
    code = "import sys, jaxcifar.data, jaxcifar.cli; print('tensorflow_datasets' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
