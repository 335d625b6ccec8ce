"""The facts about a benchmark run that decide how its numbers read: machine and versions."""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import re
from typing import Any

PACKAGES = ("jax", "jaxlib", "numpy", "optax", "torch")
# Thread counts of NumPy's BLAS and torch's OpenMP: on a CPU shared with other busy processes
# a multi-threaded library can run many times slower than a single-threaded one.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
# x86 vector extensions that move CPU step times: XLA:CPU's and oneDNN's kernels differ by
# them, and results from an AVX2 and an AVX-512 machine do not compare (benchmarks/README.md,
# finding 11).
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile")


def package_version(name: str) -> str | None:
    """The installed version of distribution `name`, or None when it is not installed."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> list[str] | None:
    """Which of CPU_FLAGS the processor has, from Linux's `cpuinfo`; None where it cannot be
    read (other systems)."""
    try:
        with open(cpuinfo) as file:
            flags = next((line.split(":", 1)[1].split() for line in file
                          if line.startswith("flags")), [])  # fmt: skip
    except OSError:
        return None
    return [flag for flag in CPU_FLAGS if flag in flags]


def describe_environment() -> dict[str, Any]:
    """Device, versions, CPU count, vector extensions and load, XLA_FLAGS, GLIBC_TUNABLES and
    thread variables, and the date, for the header of a results file.

    Imports JAX (to ask for the device) but not torch: its version comes from metadata.
    """
    import jax

    device = jax.devices()[0]
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "platform": device.platform,
        "device_kind": device.device_kind,
        "device_count": jax.device_count(),
        "cpu_count": os.cpu_count(),
        # Fewer than cpu_count when the process is pinned (taskset).
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "processor": platform.processor() or platform.machine(),
        "cpu_flags": cpu_flags(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        # glibc.malloc.hugetlb=1 makes large jitted steps 1.5-1.8x faster (finding 11).
        "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
        "thread_variables": {name: os.environ.get(name) for name in THREAD_VARIABLES},
        "versions": {
            "python": platform.python_version(),
            **{name: package_version(name) for name in PACKAGES},
        },
    }


def device_name() -> str:
    """The default device's kind, e.g. "NVIDIA H200" or "cpu"."""
    import jax

    return jax.devices()[0].device_kind


def device_slug(name: str) -> str:
    """A file-name-safe form of a device name: "NVIDIA H200" -> "nvidia-h200"."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "device"
