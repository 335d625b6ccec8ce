import subprocess
import sys
import urllib.error
import urllib.request

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
    monkeypatch.setattr(tfds_source, "check_reachable", lambda *args: None)  # "online"
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

    monkeypatch.setattr(tfds_source, "check_reachable", lambda *args: None)  # host "answers"
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


@pytest.mark.parametrize("name", ["cifar10", "fashion_mnist"])
def test_an_unreachable_download_host_fails_at_once_naming_it(no_data_dir, monkeypatch, name):
    monkeypatch.setenv("TFDS_DATA_DIR", "/nonexistent/tfds")  # nothing prepared there
    url = tfds_source.DOWNLOAD_HOSTS[name]

    def unreachable(request, timeout):
        assert (request.full_url, request.get_method(), timeout) == (url, "HEAD", 10.0)
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(urllib.request, "urlopen", unreachable)
    monkeypatch.setattr(tfds, "data_source", lambda *a, **k: pytest.fail("tfds was asked"))
    with pytest.raises(DataError) as error:
        load(name, "train")
    message = str(error.value)
    assert message.startswith(
        f"could not get {name} from tensorflow-datasets: its download host {url} is "
        "unreachable ([Errno -2] Name or service not known). Without network access,"
    )
    assert "--data-dir" in message


def test_a_host_that_answers_with_an_error_status_is_reachable(monkeypatch):
    requests = []

    def forbidden(request, timeout):
        requests.append((request.full_url, request.get_method(), timeout))
        raise urllib.error.HTTPError(request.full_url, 403, "Forbidden", {}, None)

    monkeypatch.setattr(urllib.request, "urlopen", forbidden)
    tfds_source.check_reachable("mnist", "use --data-dir")  # no error: the host is there
    assert requests == [(tfds_source.DOWNLOAD_HOSTS["mnist"], "HEAD", 10.0)]
