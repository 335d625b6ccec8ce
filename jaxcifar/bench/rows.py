"""One benchmark row per measured case, and the ratios that put rows side by side.

Rows are plain dataclasses so they go to JSON with `dataclasses.asdict`. Every time is in
seconds; a field that does not apply to a row (compile time or memory of an eager framework's
step) is None, never 0.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from jaxcifar.bench.timing import percentiles

# Cases timed as repeated steps of a model (the epoch cases time whole epochs).
STEP_CASES = ("train_step", "scratch_step")
# The machine's matmul roof (`jaxcifar.bench.peak`): a GEMM, so it has FLOP/s but no images.
ROOF_CASE = "matmul_peak"


@dataclasses.dataclass
class Row:
    """One measured case.

    `framework` is jax, numpy, torch or torch-compile. `case` is train_step (the step
    `jaxcifar train` runs: cross-entropy, SGD momentum, dropout on), scratch_step
    (jaxcifar.scratch's recipe: sigmoid outputs, squared error, plain SGD), or epoch_loop /
    epoch_scan (one epoch through jaxcifar.train's epoch runner in that mode).
    `step_seconds` is {"median", "p10", "p90"} over `steps_timed` timed steps; epoch rows
    instead time one whole epoch (`epoch_seconds`, `steps_per_epoch`), and their
    `step_seconds` holds the epoch's mean step in all three fields.
    For JAX steps `compile_seconds` is lowering + XLA compilation, of which `lower_seconds`
    the lowering, and `first_run_seconds` the compiled program's first run; for
    torch.compile it is the first call, for epochs the runner's compile time.
    `peak_memory_bytes` (jitted JAX steps and the JAX roof) is the device memory one call of
    the compiled program takes by XLA's buffer assignment: arguments, outputs and temporaries
    (`xla_cost.program_memory_bytes`; None where the backend gives no analysis).
    `case` matmul_peak (model "gemm", batch_size n) is the machine's roof, an (n, n) float32
    matmul (`jaxcifar.bench.peak`).
    `jax_speedup` (reference rows) is this row's median step over the matching jitted JAX
    float32 step: > 1 means JAX is faster. `speedup_bound` (step rows with FLOPs, when the
    run measured a roof) is the roof's best FLOP/s over this row's: how much faster the step
    would run at a large float32 matmul's speed (a bound for float32 steps; bfloat16 ones have
    a higher peak). `speedup_vs_float32` (JAX bfloat16 rows) and
    `speedup_vs_loop` (scan epochs) are the same kind of ratio against the float32 row and
    the loop epoch.
    """

    framework: str
    model: str
    case: str
    batch_size: int
    dtype: str
    input_shape: tuple[int, ...]
    step_seconds: dict[str, float]
    steps_timed: int
    compile_seconds: float | None = None
    lower_seconds: float | None = None
    first_run_seconds: float | None = None
    flops_per_step: float | None = None
    peak_memory_bytes: int | None = None
    epoch_seconds: float | None = None
    steps_per_epoch: int | None = None
    jax_speedup: float | None = None
    speedup_vs_float32: float | None = None
    speedup_vs_loop: float | None = None
    speedup_bound: float | None = None
    notes: str = ""

    @property
    def median(self) -> float:
        return self.step_seconds["median"]

    @property
    def images_per_second(self) -> float:
        return self.batch_size / self.median

    @property
    def flops_per_second(self) -> float | None:
        return None if self.flops_per_step is None else self.flops_per_step / self.median

    def to_dict(self) -> dict:
        """The row as JSON-ready data, with the derived rates filled in."""
        out = dataclasses.asdict(self)
        out["input_shape"] = list(self.input_shape)
        out["images_per_second"] = self.images_per_second
        out["flops_per_second"] = self.flops_per_second
        return out


def step_row(framework: str, model: str, case: str, batch_size: int, dtype: str,
             input_shape: Sequence[int], seconds: np.ndarray, **fields) -> Row:  # fmt: skip
    """A Row from the (n,) per-step times of a timed loop."""
    return Row(framework, model, case, batch_size, dtype, tuple(input_shape),
               percentiles(seconds), len(seconds), **fields)  # fmt: skip


def add_ratios(rows: Sequence[Row]) -> None:
    """Fill in `jax_speedup`, `speedup_vs_float32`, `speedup_vs_loop` and `speedup_bound` in
    place, for every row whose counterpart was measured in the same run."""
    roofs = [r.flops_per_second for r in rows if r.case == ROOF_CASE]
    roof = max(roofs, default=None)
    jax_float32 = {
        (r.model, r.case, r.batch_size): r
        for r in rows
        if r.framework == "jax" and r.dtype == "float32"
    }
    loop_epochs = {(r.model, r.batch_size): r for r in rows if r.case == "epoch_loop"}
    for row in rows:
        base = jax_float32.get((row.model, row.case, row.batch_size))
        if base is not None and row.framework != "jax":
            row.jax_speedup = row.median / base.median
        elif base is not None and row is not base:
            row.speedup_vs_float32 = base.median / row.median
        loop = loop_epochs.get((row.model, row.batch_size))
        if row.case == "epoch_scan" and loop is not None:
            row.speedup_vs_loop = loop.epoch_seconds / row.epoch_seconds
        if roof is not None and row.case in STEP_CASES and row.flops_per_second:
            row.speedup_bound = roof / row.flops_per_second
