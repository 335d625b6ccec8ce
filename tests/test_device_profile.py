"""`bench.device_profile` on the CPU, whose host plane records each jitted call: the events
are counted and summed per name (a GPU's kernels are the same kind of events)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxcifar.bench.device_profile import traced_event_times

CALL = "PjitFunction(<lambda>)"


def calls_traced(calls: int) -> dict:
    double = jax.jit(lambda x: 2 * x)
    x = jnp.ones(8)
    double(x).block_until_ready()

    def run():
        return [double(x) for _ in range(calls)]

    rows = traced_event_times(run, plane_prefix="/host:CPU")
    totals = [row["total_us"] for row in rows]
    assert totals == sorted(totals, reverse=True)
    (row,) = [row for row in rows if row["name"] == CALL]
    return row


def test_events_are_counted_and_summed_per_name():
    # Each call records the same number of events (the Python tracer and JAX's own).
    five, ten = calls_traced(5), calls_traced(10)
    assert ten["count"] == 2 * five["count"] > 0
    assert five["total_us"] > 0
    assert abs(five["mean_us"] * five["count"] - five["total_us"]) < 0.01 * five["count"]


def test_only_device_planes_are_summed_by_default():
    rows = traced_event_times(lambda: jnp.ones(3) + 1)
    if jax.default_backend() == "cpu":
        assert rows == []  # a CPU has no "/device:" planes
    else:
        assert rows and all(row["plane"].startswith("/device:") for row in rows)
