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

from jaxcifar.bench.rows import Row, step_row
from jaxcifar.bench.timing import TimingBudget, time_steps
from jaxcifar.bench.xla_cost import compile_timed, flops

# Large enough that a GEMM runs at its asymptotic rate on a CPU (4 MiB per operand), small
# enough to take a few milliseconds; a GPU reaches its roof only at larger sizes, so on one
# this row is a lower bound of the roof.
MATMUL_SIZE = 1024
CASE = "matmul_peak"


def _matmul_row(framework: str, seconds: np.ndarray, **fields) -> Row:
    shape = (MATMUL_SIZE, MATMUL_SIZE)
    return step_row(framework, "gemm", CASE, MATMUL_SIZE, "float32", shape, seconds,
                    flops_per_step=2.0 * MATMUL_SIZE**3, **fields)  # fmt: skip


def measure_jax_matmul(budget: TimingBudget) -> Row:
    """Time a jitted (n, n) @ (n, n) float32 product, n = MATMUL_SIZE, on the default device."""
    a = jax.random.normal(jax.random.key(0), (MATMUL_SIZE, MATMUL_SIZE), jnp.float32)
    compiled = compile_timed(jax.jit(jnp.matmul), a, a)
    assert flops(compiled.executable) == 2.0 * MATMUL_SIZE**3

    def step() -> None:
        jax.block_until_ready(compiled.executable(a, a))

    return _matmul_row("jax", time_steps(step, budget), compile_seconds=compiled.compile_seconds)


def measure_numpy_matmul(budget: TimingBudget) -> Row:
    """Time NumPy's (n, n) @ (n, n) float32 product (its BLAS), n = MATMUL_SIZE."""
    a = np.random.default_rng(0).standard_normal((MATMUL_SIZE, MATMUL_SIZE), np.float32)
    return _matmul_row("numpy", time_steps(lambda: a @ a, budget))
