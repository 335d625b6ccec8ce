"""How every training, evaluation and prediction program of this project compiles: ahead of
time, timed where that is measured (`compile_timed`), and on a CPU with XLA:CPU's library
fusions less YNNPACK's convolutions (`compiler_options`).

XLA:CPU hands parts of a program to YNNPACK ("library fusions", the debug option
`xla_cpu_experimental_ynn_fusion_type`, a list of fusion types; this jaxlib's default is
REDUCE, INDIVIDUAL_DOT and INDIVIDUAL_CONVOLUTION). Without the convolution type, XLA runs
convolutions on Eigen's kernels; reductions and dots stay in YNNPACK. Measured alternated in
one process (benchmarks/README.md, findings 9 and 11), ms per step, this choice against
XLA's defaults and against no library fusions at all:
- AVX-512 CPU, the seed CNN's chunk epochs of real data: 0.50 / 0.65 / 0.64 at batch 4,
  0.78 / 1.09 / 1.17 at 8, 2.6 / 4.9 / 4.1 at 32, 14 / 25 / 16 at 128, 62 / 145 / 77 at 512;
  a jitted step at 2,048: 251 / 620 / 313; the fast recipe at batch 16: 1.6 / 2.3 / 2.1.
- AVX2 CPU: the fast recipe at batch 16 4.8 / 8.1 / 7.1, the seed CNN at 32 11.4 / 26.1 /
  14.5, its evaluation of 1,000 images 155 / 159 / 236 us per image; only the seed CNN at
  batch 4 ran faster with XLA's defaults there, 2.11 against 1.97 (inside that machine's
  spread, 1.69-2.83), and only `jaxcifar speedrun`'s step without library fusions, 1,282-
  1,362 against 1,511-1,526 (a tie on the AVX-512 CPU: 319 against 326).

Other backends keep XLA's defaults.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax

_OPTION = "xla_cpu_experimental_ynn_fusion_type"
# Named rather than "the defaults less one": XLA's defaults change between releases.
_FUSION_TYPES = "LIBRARY_FUSION_TYPE_REDUCE,LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"


def compiler_options() -> dict[str, str] | None:
    """{option: value} for `Lowered.compile` on a CPU: YNNPACK's reductions and dots, not
    its convolutions. None (XLA's defaults) on other backends."""
    if jax.default_backend() != "cpu":
        return None
    return {_OPTION: _FUSION_TYPES}


def compile_program(lowered: jax.stages.Lowered,
                    options: dict[str, Any] | None = None) -> jax.stages.Compiled:  # fmt: skip
    """`lowered.compile()` with `compiler_options()` and the caller's own `options` (XLA
    debug options by name, each a str, bool or int as XLA types it) over them. A jaxlib
    that predates the CPU option, or the fusion types it names, compiles without it."""
    own = options or {}
    cpu = compiler_options()
    if cpu is None:
        return lowered.compile(compiler_options=own or None)
    try:
        return lowered.compile(compiler_options={**cpu, **own})
    except jax.errors.JaxRuntimeError as error:
        unknown = (f"No such compile option: '{_OPTION}'", f"While setting option {_OPTION},")
        if not any(message in str(error) for message in unknown):
            raise
        return lowered.compile(compiler_options=own or None)


def compiled_per_shape(jitted: Callable, options: dict[str, Any] | None = None) -> Callable:
    """`jitted` (a `jax.jit` function of array arguments), compiled by `compile_program` (with
    `options`) the first time it meets each structure, shapes and dtypes of arguments; cached
    after that."""
    executables: dict[Any, jax.stages.Compiled] = {}

    def call(*args: Any) -> Any:
        leaves, tree = jax.tree.flatten(args)
        key = (tree, tuple((leaf.shape, leaf.dtype) for leaf in leaves))
        if key not in executables:
            executables[key] = compile_program(jitted.lower(*args), options)
        return executables[key](*args)

    return call


class TimedCompile(NamedTuple):
    """A jitted function lowered and compiled for one set of argument shapes."""

    executable: Any  # jax.stages.Compiled: call it with the same kinds of arguments
    lower_seconds: float  # tracing and lowering to StableHLO
    compile_seconds: float  # lowering + XLA compilation


def compile_timed(jitted: Any, *args: Any, xla_defaults: bool = False,
                  options: dict[str, Any] | None = None) -> TimedCompile:  # fmt: skip
    """`jitted.lower(*args)` compiled by `compile_program` (on a CPU, without YNNPACK's
    convolutions), or with XLA's defaults if `xla_defaults`, with `options` (XLA debug
    options) either way, timing the lowering and the whole: how the epoch runners, the
    speedrun and the benchmarks compile ahead of time."""
    start = time.perf_counter()
    lowered = jitted.lower(*args)
    lowered_at = time.perf_counter()
    if xla_defaults:
        executable = lowered.compile(compiler_options=options)
    else:
        executable = compile_program(lowered, options)
    return TimedCompile(executable, lowered_at - start, time.perf_counter() - start)
