"""Wall-clock timing of repeated steps and their summary statistics.

Framework-neutral: a step is any zero-argument callable that returns only when its work is
done (for JAX, the caller ends it with `jax.block_until_ready`; NumPy and eager PyTorch on
CPU are synchronous already), so the time between two `perf_counter` calls is the step.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import numpy as np


@dataclasses.dataclass(frozen=True)
class TimingBudget:
    """How many times to run a step: `warmup` untimed runs, then timed runs until at least
    `min_steps` have run and `min_seconds` have passed, stopping at `max_steps` either way.

    `fixed(n)` times exactly n steps. Slow cases (a 2048-image CNN step on a 2-core CPU
    takes seconds) run `min_steps`; fast ones run until `min_seconds`, so every case costs
    about the same wall time and the percentiles of fast cases rest on many samples.
    """

    warmup: int = 1
    min_steps: int = 3
    min_seconds: float = 1.0
    max_steps: int = 500

    def __post_init__(self) -> None:
        if self.warmup < 0 or not 1 <= self.min_steps <= self.max_steps or self.min_seconds < 0:
            raise ValueError(
                "need warmup >= 0, 1 <= min_steps <= max_steps and min_seconds >= 0; "
                f"got {self}"
            )

    @classmethod
    def fixed(cls, steps: int, warmup: int = 1) -> TimingBudget:
        """Exactly `steps` timed steps after `warmup` untimed ones."""
        return cls(warmup=warmup, min_steps=steps, min_seconds=0.0, max_steps=steps)


def time_steps(step: Callable[[], object], budget: TimingBudget) -> np.ndarray:
    """Seconds taken by each timed call of `step`, (n,) float64, min_steps <= n <= max_steps."""
    for _ in range(budget.warmup):
        step()
    seconds = []
    started = time.perf_counter()
    while len(seconds) < budget.max_steps and (
        len(seconds) < budget.min_steps or time.perf_counter() - started < budget.min_seconds
    ):
        start = time.perf_counter()
        step()
        seconds.append(time.perf_counter() - start)
    return np.asarray(seconds)


def percentiles(seconds: np.ndarray) -> dict[str, float]:
    """{"median", "p10", "p90"} of `seconds` (n,) float, n >= 1 (linear interpolation)."""
    p10, median, p90 = np.percentile(np.asarray(seconds, np.float64), [10, 50, 90])
    return {"median": float(median), "p10": float(p10), "p90": float(p90)}
