"""The facts about a benchmark run that decide how its numbers read: machine and versions."""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
from typing import Any

PACKAGES = ("jax", "jaxlib", "numpy", "optax", "torch")


def package_version(name: str) -> str | None:
    """The installed version of distribution `name`, or None when it is not installed."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def describe_environment() -> dict[str, Any]:
    """Device, versions, CPU count, XLA_FLAGS and the date, for the header of a results file.

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
        "processor": platform.processor() or platform.machine(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "versions": {
            "python": platform.python_version(),
            **{name: package_version(name) for name in PACKAGES},
        },
        "memory_stats": (
            "reported"
            if device.memory_stats()
            else f"not reported by the {device.platform} backend"
        ),
    }
