"""Flag types and flag groups shared by several commands."""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from jaxcifar.data.dataset import CLASS_NAMES
from jaxcifar.data.sources import DATA_DIR_ENV
from jaxcifar.errors import ConfigError

DATASETS = tuple(CLASS_NAMES)


def _whole_number(text: str, *, allow_zero: bool) -> int:
    """argparse type body: an integer > 0 (>= 0 with `allow_zero`)."""
    expected = "an integer >= 0" if allow_zero else "a positive integer"
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
    if value < 0 or (value == 0 and not allow_zero):
        raise argparse.ArgumentTypeError(f"expected {expected}, got {value}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer > 0."""
    return _whole_number(text, allow_zero=False)


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    return _whole_number(text, allow_zero=True)


def _finite_float(text: str, *, allow_zero: bool) -> float:
    """argparse type body: a finite float > 0 (>= 0 with `allow_zero`)."""
    expected = "a finite number >= 0" if allow_zero else "a positive finite number"
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
    if not (value >= 0 if allow_zero else value > 0) or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite float > 0."""
    return _finite_float(text, allow_zero=False)


def non_negative_float(text: str) -> float:
    """argparse type: a finite float >= 0."""
    return _finite_float(text, allow_zero=True)


def add_data_dir_argument(parser: argparse.ArgumentParser) -> None:
    """`--data-dir` (default: $JAXCIFAR_DATA_DIR, else tensorflow-datasets)."""
    parser.add_argument(
        "--data-dir",
        default=os.environ.get(DATA_DIR_ENV),
        metavar="PATH",
        help="local data: a folder (or archive) holding the canonical CIFAR-10 python or binary "
        "release, MNIST-format IDX files, or an image-folder tree train/<class>/*, test/<class>/*. "
        f"Defaults to ${DATA_DIR_ENV}; when neither is set, tensorflow-datasets downloads it.",
    )


def add_data_arguments(parser: argparse.ArgumentParser, default_dataset: str = "cifar10") -> None:
    """`--dataset` and `--data-dir`; `default_dataset=argparse.SUPPRESS` leaves `dataset` out of
    the parsed namespace unless the flag is given."""
    parser.add_argument(
        "--dataset", choices=DATASETS, default=default_dataset, help="which dataset to use"
    )
    add_data_dir_argument(parser)


def add_compile_cache_argument(parser: argparse.ArgumentParser) -> None:
    """`--compile-cache DIR` (see `jaxcifar.xla_cache.resolve`)."""
    parser.add_argument(
        "--compile-cache", metavar="DIR",
        help="persistent XLA compilation cache, so a second run starts with compiled programs "
        "(default: $JAXCIFAR_CACHE/xla, else ~/.cache/jaxcifar/xla); 'none' turns it off",
    )  # fmt: skip


def check_writable_folder(folder: Path) -> None:
    """Create `folder` and write a probe file in it, so a bad --out fails before training
    rather than after it. (Probing beats os.access, which says yes to root.)"""
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"--out {folder} is a file; expected a folder (or a path to create one)")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        reason = error.strerror or error
        raise ConfigError(f"--out {folder}: cannot write there ({reason})") from None
