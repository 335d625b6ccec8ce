"""Placeholder: the dataset readers are being built."""

from __future__ import annotations

from jaxcifar.data.dataset import Dataset
from jaxcifar.errors import DataError


def load(name: str, split: str, *, data_dir: str | None = None) -> Dataset:
    raise DataError(f"cannot load {name}/{split} from {data_dir}: readers not implemented yet")
