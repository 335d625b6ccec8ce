"""XLA:CPU's library fusions, kept for programs of small arrays and turned off for large ones.

XLA:CPU hands convolutions, dots, reductions and elementwise chains to YNNPACK ("library
fusions", the debug option `xla_cpu_experimental_ynn_fusion_type`). They pay while a
program's arrays are small and cost once they outgrow the caches. Measured on the 2-core CPU,
with and without them alternated in one process (benchmarks/README.md, finding 7): the seed
CNN's training step 8.6 vs 9.4 ms at batch 16 (largest float array 2 MiB) but 20.7 vs 17.4
ms at batch 32 (4 MiB) and 1,053 vs 943 ms at 1,024; its evaluation of 1,000 images 363 vs
237 ms; the fast recipe's step at full width 20 vs 10 s.

So a program whose largest floating-point array exceeds LIBRARY_FUSIONS_MAX_BYTES compiles
without them (`compile_for_size`). Integer arrays do not count: a uint8 dataset handed to a
program is read a batch at a time. Other backends keep XLA's defaults.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

import jax

# Between the largest array measured faster with library fusions (2 MiB) and the smallest
# measured faster without (4 MiB).
LIBRARY_FUSIONS_MAX_BYTES = 3 * 2**20
# Its value "" lists no fusion types: every op compiles to XLA's own kernels.
_OPTION = "xla_cpu_experimental_ynn_fusion_type"
# StableHLO array types: tensor<4x32x32x3xf32>. Scalars (tensor<f32>) are too small to count.
_FLOAT_ARRAY = re.compile(r"tensor<((?:\d+x)+)(f64|f32|bf16|f16)>")
_FLOAT_BYTES = {"f64": 8, "f32": 4, "bf16": 2, "f16": 2}


def largest_float_array_bytes(lowered: jax.stages.Lowered) -> int:
    """Bytes of the largest floating-point array any op of `lowered` makes or takes."""
    return max(
        (
            math.prod(int(d) for d in dims[:-1].split("x")) * _FLOAT_BYTES[dtype]
            for dims, dtype in _FLOAT_ARRAY.findall(lowered.as_text())
        ),
        default=0,
    )


def compiler_options(lowered: jax.stages.Lowered) -> dict[str, str] | None:
    """{option: value} for `lowered.compile`: library fusions off on a CPU when the
    program's largest floating-point array exceeds LIBRARY_FUSIONS_MAX_BYTES; else None."""
    if jax.default_backend() != "cpu":
        return None
    if largest_float_array_bytes(lowered) <= LIBRARY_FUSIONS_MAX_BYTES:
        return None
    return {_OPTION: ""}


def compile_for_size(lowered: jax.stages.Lowered) -> jax.stages.Compiled:
    """`lowered.compile()` with `compiler_options(lowered)`. A jaxlib that predates the
    option (it appeared with YNNPACK) compiles with its defaults."""
    options = compiler_options(lowered)
    if options is None:
        return lowered.compile()
    try:
        return lowered.compile(compiler_options=options)
    except jax.errors.JaxRuntimeError as error:
        if f"No such compile option: '{_OPTION}'" not in str(error):
            raise
        return lowered.compile()


def compiled_per_shape(jitted: Callable) -> Callable:
    """`jitted` (a `jax.jit` function of array arguments), compiled by `compile_for_size` the
    first time it meets each structure, shapes and dtypes of arguments; cached after that."""
    executables: dict[Any, jax.stages.Compiled] = {}

    def call(*args: Any) -> Any:
        leaves, tree = jax.tree.flatten(args)
        key = (tree, tuple((leaf.shape, leaf.dtype) for leaf in leaves))
        if key not in executables:
            executables[key] = compile_for_size(jitted.lower(*args))
        return executables[key](*args)

    return call
