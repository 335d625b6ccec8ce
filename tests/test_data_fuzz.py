"""Random and mutated files: every reader returns valid arrays or raises DataError, nothing else."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxcifar.data.cifar import parse_binary_batch, parse_python_batch
from jaxcifar.data.idx import IMAGES_MAGIC, LABELS_MAGIC, parse
from jaxcifar.errors import DataError
from data_files import binary_batch, idx_bytes, python_batch

FUZZ = settings(max_examples=150, deadline=None)  # no per-example time limit: not a timing test
rng = np.random.default_rng(0)
# What each valid file holds: (images, labels or None).
CONTENTS = {
    "idx_images": (rng.integers(0, 256, (3, 4, 5), dtype=np.uint8), None),
    "idx_labels": (rng.integers(0, 10, 3, dtype=np.uint8), None),
    "binary": (rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8), np.array([3, 4])),
    "python": (rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8), np.array([1, 9])),
}
VALID = {
    "idx_images": idx_bytes(CONTENTS["idx_images"][0], IMAGES_MAGIC),
    "idx_labels": idx_bytes(CONTENTS["idx_labels"][0], LABELS_MAGIC),
    "binary": binary_batch(*CONTENTS["binary"]),
    "python": python_batch(CONTENTS["python"][0], CONTENTS["python"][1].tolist()),
}
READERS = {
    "idx_images": lambda d: parse(d, IMAGES_MAGIC, "f"),
    "idx_labels": lambda d: parse(d, LABELS_MAGIC, "f"),
    "binary": lambda d: parse_binary_batch(d, "f"),
    "python": lambda d: parse_python_batch(d, "f"),
}


@st.composite
def mutated(draw, valid: bytes):
    """`valid` with a few bytes overwritten, then maybe cut short or extended."""
    data = bytearray(valid)
    for _ in range(draw(st.integers(0, 4))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    cut = draw(st.integers(0, len(data) + 8))
    return bytes(data[:cut]) + bytes(max(0, cut - len(data)))


def check(read, data: bytes) -> None:
    try:
        result = read(data)
    except DataError:
        return
    images, labels = result if isinstance(result, tuple) else (result, None)
    assert images.dtype == np.uint8 and images.size > 0
    if labels is not None:
        assert labels.dtype == np.int32 and len(labels) == len(images)
        assert labels.min() >= 0 and labels.max() <= 9


@pytest.mark.parametrize("name", READERS)
def test_each_reader_reads_its_unmutated_valid_file(name):
    # So `check`, which lets DataError pass, cannot pass a reader that refuses everything.
    result = READERS[name](VALID[name])
    images, labels = result if isinstance(result, tuple) else (result, None)
    expected_images, expected_labels = CONTENTS[name]
    np.testing.assert_array_equal(images, expected_images)
    assert images.dtype == np.uint8
    if expected_labels is not None:
        np.testing.assert_array_equal(labels, expected_labels)
        assert labels.dtype == np.int32


@FUZZ
@given(
    st.one_of(st.binary(max_size=200), mutated(VALID["idx_images"]), mutated(VALID["idx_labels"]))
)
def test_idx_parse(data):
    check(READERS["idx_images"], data)
    check(READERS["idx_labels"], data)


@FUZZ
@given(st.one_of(st.binary(max_size=7000), mutated(VALID["binary"])))
def test_cifar_binary_batch(data):
    check(READERS["binary"], data)


@FUZZ
@given(st.one_of(st.binary(max_size=300), mutated(VALID["python"])))
def test_cifar_python_batch(data):
    check(READERS["python"], data)
