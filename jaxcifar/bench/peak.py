"""The machine's matmul roof: how many FLOP/s a large float32 GEMM reaches, in XLA and in
NumPy's BLAS, measured in the same run as the steps.

A step cannot run faster than its FLOPs at this rate, so the roof bounds every speed-up:
a step at F FLOP/s can gain at most roof / F by any implementation. That turns "is JAX 5x
faster than NumPy here?" into arithmetic: when NumPy already runs the step at a fifth of the
roof or more, no implementation is 5x faster.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxcifar.bench.rows import ROOF_CASE, Row, step_row
from jaxcifar.bench.timing import TimingBudget, time_steps
from jaxcifar.bench.xla_cost import program_memory_bytes
from jaxcifar.compiling import compile_timed

# Large enough that a GEMM runs at its asymptotic rate (on a CPU 1024: 4 MiB per operand; a
# GPU needs thousands of rows to fill its cores), small enough to take milliseconds.
CPU_MATMUL_SIZE = 1024
GPU_MATMUL_SIZE = 8192


def _matmul_row(framework: str, size: int, seconds: np.ndarray, **fields) -> Row:
    return step_row(framework, "gemm", ROOF_CASE, size, "float32", (size, size), seconds,
                    flops_per_step=2.0 * size**3, **fields)  # fmt: skip


def measure_jax_matmul(budget: TimingBudget) -> Row:
    """Time a jitted (n, n) @ (n, n) float32 product on the default device: n is
    CPU_MATMUL_SIZE on a CPU, GPU_MATMUL_SIZE on an accelerator. At JAX's default precision,
    the one the steps use: on recent NVIDIA GPUs that is TF32, so there this is TF32's roof."""
    size = CPU_MATMUL_SIZE if jax.default_backend() == "cpu" else GPU_MATMUL_SIZE
    a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
    # XLA's default fusions: the roof is what the matmul library itself reaches.
    compiled = compile_timed(jax.jit(jnp.matmul), a, a, xla_defaults=True)

    def step() -> None:
        jax.block_until_ready(compiled.executable(a, a))

    return _matmul_row("jax", size, time_steps(step, budget),
                       compile_seconds=compiled.compile_seconds,
                       peak_memory_bytes=program_memory_bytes(compiled.executable))  # fmt: skip


def measure_numpy_matmul(budget: TimingBudget) -> Row:
    """Time NumPy's (n, n) @ (n, n) float32 product (its BLAS), n = CPU_MATMUL_SIZE."""
    a = np.random.default_rng(0).standard_normal((CPU_MATMUL_SIZE, CPU_MATMUL_SIZE), np.float32)
    return _matmul_row("numpy", CPU_MATMUL_SIZE, time_steps(lambda: a @ a, budget))
