"""JAX's persistent compilation cache, so a second process starts with compiled programs.

Compiling a training run's programs takes seconds (the seed CNN's step on a CPU) to tens of
seconds (the speedrun's epochs); the cache stores each compiled executable on disk under a key
of its program, compile options and backend, and a later process with the same programs loads
them instead of compiling. `jaxcifar train` and `jaxcifar speedrun` use it (--compile-cache).
It is not size-bounded (JAX's bound needs the `filelock` package and cannot evict entries
written without it): the folder is safe to delete at any time.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

from jaxcifar.data.cache import cache_dir

OFF = "none"  # the --compile-cache value that turns the cache off


def default_dir() -> Path:
    """<dataset cache>/xla: $JAXCIFAR_CACHE/xla, else ~/.cache/jaxcifar/xla."""
    return cache_dir() / "xla"


def resolve(flag: str | None) -> Path | None:
    """The cache folder a --compile-cache value names: `default_dir()` when not given (None,
    with a warning, when it cannot be made: $JAXCIFAR_CACHE a file, say, where JAX would
    warn at every compile), None (no cache) for "none"."""
    if flag is not None:
        return None if flag == OFF else Path(flag)
    folder = default_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        warnings.warn(
            f"compiled programs are not cached: cannot make {folder} "
            f"({error.strerror or error}; --compile-cache names another folder)",
            stacklevel=2,
        )
        return None
    return folder


@contextlib.contextmanager
def compilation_cache(path: str | os.PathLike[str] | None) -> Iterator[None]:
    """Inside the block, JAX reads and writes compiled programs under `path` (None: no
    persistent cache), whatever their compile time; on exit the previous settings return,
    so a long-lived process (a test session) is left as it was."""
    import jax

    settings = {
        "jax_compilation_cache_dir": None if path is None else str(path),
        # JAX skips programs that compile in under 1 s by default; the speedrun's small
        # programs (init, epoch order) are worth keeping too.
        "jax_persistent_cache_min_compile_time_secs": 0.0,
    }
    previous = {name: getattr(jax.config, name) for name in settings}
    _reset_cache()
    for name, value in settings.items():
        jax.config.update(name, value)
    try:
        yield
    finally:
        for name, value in previous.items():
            jax.config.update(name, value)
        _reset_cache()


def _reset_cache() -> None:
    """Make JAX build its cache object again, from the folder set at the next compile: it
    builds it once per process otherwise. The call is in `jax.experimental`, which a JAX
    release may move; without it the run goes on (the cache only saves time) and warns."""
    import jax

    try:
        from jax.experimental.compilation_cache.compilation_cache import reset_cache
    except ImportError as error:
        warnings.warn(
            f"this JAX ({jax.__version__}) moved the call that points its compilation cache "
            f"at a new folder ({error}); compiled programs may not be saved there",
            stacklevel=2,
        )
        return
    reset_cache()
