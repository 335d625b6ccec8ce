"""Fixtures shared by the test suite."""

import re
from collections.abc import Callable
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real datasets kept beside the project (`../shared/data`); skips when absent.

    Loads from here go through the default dataset cache ($JAXCIFAR_CACHE, else
    ~/.cache/jaxcifar), so a machine decodes the 60,000 CIFAR-10 JPEGs at most once.
    """
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def convolution_dim_labels() -> Callable[[str], list[str]]:
    """A function: the dim_labels of every convolution in a compiled program's HLO text
    (`compiled.as_text()`), e.g. "b01f_01io->b01f", the form XLA:CPU's library kernels take."""
    return lambda hlo_text: re.findall(r"convolution\(.*?dim_labels=([\w>-]+)", hlo_text)


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch) -> Path:
    """An empty dataset cache for this test only, so tests see (and leave) no other entries."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("JAXCIFAR_CACHE", str(cache))
    return cache
