"""Fixtures shared by the test suite."""

import faulthandler
import os
import re
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def pytest_configure(config: pytest.Config) -> None:
    """Python's own SIGINT handler, whatever this process inherited: a suite started in the
    background by a script (`pytest &`) starts with SIGINT ignored, which jaxcifar, rightly,
    leaves ignored, and every test of Ctrl-C would fail. Its children (exec resets a caught
    signal to the default) get Python's handler too."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


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
def ends_within_a_minute() -> Iterator[None]:
    """For a test of what would block for ever when it regresses (a read of a FIFO): the
    process exits with every thread's traceback after 60 s, so the test fails, not hangs."""
    faulthandler.dump_traceback_later(60, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch) -> Path:
    """An empty dataset cache for this test only, so tests see (and leave) no other entries."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("JAXCIFAR_CACHE", str(cache))
    return cache


@pytest.fixture
def save_speedrun_model() -> Callable[..., Path]:
    """A function: `save(folder, **changes)` writes a small speedrun model (widths 8/16/16,
    freshly initialised, for 32x32 CIFAR-10 images) into `folder` and returns its path;
    `changes` replace `model_file.save`'s keyword arguments (recipe, params, ...)."""
    import jax
    import jax.numpy as jnp

    from jaxcifar.data.dataset import CIFAR10_CLASSES
    from jaxcifar.speedrun import model_file, net
    from jaxcifar.speedrun.recipe import Recipe

    widths = (8, 16, 16)
    params, batch_stats = jax.jit(net.init, static_argnames="widths")(
        jax.random.key(0), widths=widths
    )
    defaults = dict(
        recipe=Recipe(widths=widths, dtype="float32"), params=params, batch_stats=batch_stats,
        mean=jnp.zeros(3), std=jnp.ones(3), dataset="cifar10", class_names=CIFAR10_CLASSES,
        input_shape=(32, 32, 3),
    )  # fmt: skip
    return lambda folder, **changes: model_file.save(folder, **{**defaults, **changes})


@pytest.fixture
def sigterm_while_drawing(monkeypatch) -> Callable[[], None]:
    """A function that arms `jaxcifar.plots.plot_curves` to send this process SIGTERM as it
    starts drawing: a command is then between two files of its reports."""
    from jaxcifar import plots

    plot_curves = plots.plot_curves

    def signalled(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.1)  # where the signal would land
        return plot_curves(*args, **kwargs)

    return lambda: monkeypatch.setattr(plots, "plot_curves", signalled)
