"""What XLA says about a compiled step: how long it took to build, its FLOPs, device memory."""

from __future__ import annotations

import time
from typing import Any, NamedTuple

import jax


class Compiled(NamedTuple):
    """A jitted function lowered and compiled for one set of argument shapes."""

    executable: Any  # jax.stages.Compiled: call it with the same kinds of arguments
    lower_seconds: float  # tracing and lowering to StableHLO
    compile_seconds: float  # lowering + XLA compilation


def compile_timed(jitted: Any, *args: Any) -> Compiled:
    """`jitted.lower(*args).compile()`, timing the lowering and the whole."""
    start = time.perf_counter()
    lowered = jitted.lower(*args)
    lowered_at = time.perf_counter()
    executable = lowered.compile()
    return Compiled(executable, lowered_at - start, time.perf_counter() - start)


def flops(executable: Any) -> float | None:
    """FLOPs of one call by XLA's cost analysis, or None where the backend gives none.

    `cost_analysis()` returns a dict on current JAX and a one-element list of dicts on
    older versions; XLA counts a multiply-add as 2 FLOPs.
    """
    analysis = executable.cost_analysis()
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0] if analysis else None
    value = (analysis or {}).get("flops")
    return None if value is None or value < 0 else float(value)


def peak_memory_bytes(device: jax.Device | None = None) -> int | None:
    """The device's peak allocated bytes since start, or None: the CPU backend reports no
    memory statistics (`memory_stats()` is None there), GPUs and TPUs do."""
    stats = (device or jax.devices()[0]).memory_stats()
    if not stats:
        return None
    value = stats.get("peak_bytes_in_use")
    return None if value is None else int(value)
