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


def _profiled(monkeypatch, planes: dict) -> list[dict]:
    """`traced_event_times` over a stand-in profile: {plane: {line: [(name, ns), ...]}}."""
    from types import SimpleNamespace as Namespace

    profile = Namespace(planes=[
        Namespace(name=plane, lines=[
            Namespace(name=line, events=[Namespace(name=n, duration_ns=ns) for n, ns in events])
            for line, events in lines.items()
        ])
        for plane, lines in planes.items()
    ])  # fmt: skip
    monkeypatch.setattr(jax.profiler, "ProfileData",
                        Namespace(from_file=lambda path: profile), raising=False)  # fmt: skip
    return traced_event_times(lambda: jnp.ones(3))


def test_kernel_times_are_summed_per_stream_and_name_on_device_planes_only(monkeypatch):
    rows = _profiled(monkeypatch, {
        "/device:GPU:0": {"Stream #1": [("conv", 1000), ("conv", 3000), ("pool", 500)],
                          "Stream #2": [("conv", 2000)]},
        "/host:CPU": {"main": [("conv", 9000)]},
    })  # fmt: skip
    assert [(r["line"], r["name"], r["count"], r["total_us"], r["mean_us"]) for r in rows] == [
        ("Stream #1", "conv", 2, 4.0, 2.0),
        ("Stream #2", "conv", 1, 2.0, 2.0),  # another stream: its own row
        ("Stream #1", "pool", 1, 0.5, 0.5),
    ]
    assert {r["plane"] for r in rows} == {"/device:GPU:0"}


def test_a_trace_keeps_the_30_kernels_that_take_the_most_time(monkeypatch):
    events = [(f"k{i}", 1000 * i) for i in range(1, 41)]
    rows = _profiled(monkeypatch, {"/device:GPU:0": {"Stream #1": events}})
    assert [r["name"] for r in rows] == [f"k{i}" for i in range(40, 10, -1)]
