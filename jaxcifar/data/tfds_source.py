"""CIFAR-10, MNIST and Fashion-MNIST through tensorflow-datasets, without TensorFlow.

`tfds.data_source` downloads and prepares a dataset once (into ~/tensorflow_datasets or
$TFDS_DATA_DIR) and then reads its array_record files with plain NumPy. tensorflow-datasets
takes about a second to import, so it is imported only when this path is taken.
"""

from __future__ import annotations

import logging
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any

import numpy as np

from jaxcifar.data.dataset import CLASS_NAMES, Dataset
from jaxcifar.errors import DataError

# Where tensorflow-datasets downloads each dataset from (its builders' URLs). Offline, tfds
# retries for about 3.5 minutes before it gives up; one request to the same host says so at
# once when DNS fails or the connection is refused, within REACH_TIMEOUT_SECONDS otherwise.
DOWNLOAD_HOSTS = {
    "cifar10": "https://www.cs.toronto.edu/",
    "mnist": "https://storage.googleapis.com/",
    "fashion_mnist": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
}
REACH_TIMEOUT_SECONDS = 10.0


def open_split(name: str, split: str, offline_help: str) -> Sequence[dict[str, Any]]:
    """The tfds data source of one split, downloading and preparing it on first use.

    Args:
      name: the tfds name, "cifar10", "mnist" or "fashion_mnist" (the same as ours).
      split: "train" or "test".
      offline_help: what to do instead when the download fails, for the message.
    Returns:
      A sequence of {"image": (H, W, C) uint8, "label": int} examples.
    Raises:
      DataError: the dataset is not prepared and cannot be downloaded.
    """
    import tensorflow_datasets as tfds

    # Asking an unprepared builder logs an absl warning about its missing dataset_info.json:
    # noise in front of the message that follows when the host is unreachable.
    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    absl_logger.setLevel(logging.ERROR)
    try:
        prepared = tfds.builder(name).is_prepared()
    finally:
        absl_logger.setLevel(level)
    if not prepared:
        check_reachable(name, offline_help)
    try:
        return tfds.data_source(name, split=split, download=True)
    # Offline, tfds retries for minutes and then raises requests' ConnectionError; other
    # failures (a full disk, a proxy's error page, a half-prepared folder) raise other types.
    # Every one means "tfds could not provide it", and the local options are the remedy.
    except Exception as error:
        raise DataError(
            f"could not get {name} from tensorflow-datasets ({type(error).__name__}: {error}). "
            f"Without network access, {offline_help}"
        ) from None


def check_reachable(name: str, offline_help: str) -> None:
    """Raise DataError at once when `name`'s download host does not answer a HEAD request
    within REACH_TIMEOUT_SECONDS. urllib honours the proxy variables (https_proxy, ...) as
    tfds' requests does; any HTTP answer, an error status included, means the host is there."""
    url = DOWNLOAD_HOSTS[name]
    try:
        urllib.request.urlopen(
            urllib.request.Request(url, method="HEAD"), timeout=REACH_TIMEOUT_SECONDS
        ).close()
    except urllib.error.HTTPError:
        return
    except OSError as error:  # URLError, timeouts and refused connections are all OSErrors
        reason = getattr(error, "reason", error)
        raise DataError(
            f"could not get {name} from tensorflow-datasets: its download host {url} is "
            f"unreachable ({reason}). Without network access, {offline_help}"
        ) from None


def prepared_dir(source: Sequence[dict[str, Any]]) -> str:
    """The folder tfds prepared the data in, with its version (part of the cache key)."""
    return str(source.dataset_info.data_dir)  # type: ignore[attr-defined]


def read(source: Sequence[dict[str, Any]], name: str) -> Dataset:
    """Decode every example of a data source into arrays.

    Returns:
      images (N, H, W, C) uint8, labels (N,) int32, source "tfds:<name>".
    """
    where = f"tfds:{name}"
    if not len(source):
        raise DataError(f"{where}: the split in {prepared_dir(source)} holds no examples")
    # One example at a time: the batched `__getitems__` is not mocked by tfds.testing.
    examples = [source[i] for i in range(len(source))]
    images = np.stack([np.asarray(example["image"], np.uint8) for example in examples])
    labels = np.array([example["label"] for example in examples], np.int32)
    return Dataset(images, labels, CLASS_NAMES[name], where)
