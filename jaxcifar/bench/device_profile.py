"""Where a device's time goes: one call traced with JAX's profiler, its events summed by name.

On a GPU the profiler records every kernel launch on the device's planes ("/device:GPU:0"),
one line per stream, each event named after its kernel (an XLA fusion's name, or a Pallas
kernel's `name=`) with its duration on the device: summed per name they say which kernels a
launch-bound training step spends its time in, which wall-clock timing cannot.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax

# Rows kept per trace: the kernels that take the time (a fused step launches under ten).
TOP_EVENTS = 30


def traced_event_times(run: Callable[[], Any], plane_prefix: str = "/device:") -> list[dict]:
    """Run `run()` (waiting for its results) under JAX's profiler and sum the events of the
    planes whose name starts with `plane_prefix`, per (plane, line, event name).

    Returns up to TOP_EVENTS rows {"plane", "line", "name", "count", "total_us", "mean_us"},
    longest total first; [] where no plane matches (a CPU has no "/device:" planes).
    """
    # Imported here: a JAX whose profiler lacks the reader fails this call (a row without its
    # profile), not the import of every benchmark that might profile.
    from jax.profiler import ProfileData

    with tempfile.TemporaryDirectory() as folder:
        with jax.profiler.trace(folder):
            jax.block_until_ready(run())
        (trace,) = Path(folder).rglob("*.xplane.pb")
        profile = ProfileData.from_file(str(trace))
    totals: dict[tuple[str, str, str], list[float]] = {}
    for plane in profile.planes:
        if not plane.name.startswith(plane_prefix):
            continue
        for line in plane.lines:
            for event in line.events:
                total = totals.setdefault((plane.name, line.name, event.name), [0, 0.0])
                total[0] += 1
                total[1] += event.duration_ns
    rows = [
        {
            "plane": plane, "line": line, "name": name, "count": count,
            "total_us": round(nanoseconds / 1e3, 3),
            "mean_us": round(nanoseconds / 1e3 / count, 3),
        }  # fmt: skip
        for (plane, line, name), (count, nanoseconds) in totals.items()
    ]
    return sorted(rows, key=lambda row: -row["total_us"])[:TOP_EVENTS]
