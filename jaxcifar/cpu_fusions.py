"""Which of XLA:CPU's library fusions a program compiles with, by the size of its largest
floating-point array: XLA's defaults for the smallest programs, no convolutions for middling
ones, none at all for large ones.

XLA:CPU hands parts of a program to YNNPACK ("library fusions", the debug option
`xla_cpu_experimental_ynn_fusion_type`, a list of fusion types; this jaxlib's default is
REDUCE, INDIVIDUAL_DOT and INDIVIDUAL_CONVOLUTION). Measured on the 2-core CPU, alternated in
one process (benchmarks/README.md, finding 9):
- YNNPACK's convolutions cost from 1 MiB up: the seed CNN's conv1 kernel gradient took 2.4
  ms against Eigen's 0.38 (what XLA uses without them) at batch 16, the fast recipe's step
  8.1 ms against 4.8, the seed CNN's 3.40 against 3.04 at batch 8 (1 MiB) and 26 against
  11.4 at batch 32. At batch 4 (512 KiB) they pay: 1.97 against 2.11 ms.
- Its reductions pay for the CNNs: XLA's own reduction of conv1's bias gradient took 2.3 ms
  of a 6.5 ms step at batch 16; the seed CNN's step with them and the dot fusions, against
  none at all, 11.4 vs 14.5 ms at batch 32, 208 vs 225 at 512 (64 MiB), its evaluation of
  1,000 images 155 vs 242 ms. But the fast recipe of `jaxcifar speedrun` at batch 1,024
  (widths 16/32/32, float32, 90 MiB) steps 12% slower with them: a YNNPACK reduction takes
  in GELU's gradient, with two constants broadcast to 94 MB arrays.

Integer arrays do not count: a uint8 dataset handed to a program is read a batch at a time.
Other backends keep XLA's defaults.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

import jax

# Up to this, XLA's defaults: the largest array measured faster with YNNPACK's convolutions
# (the seed CNN's step at batch 4); at 1 MiB (batch 8) they were slower.
XLA_DEFAULTS_MAX_BYTES = 512 * 2**10
# Up to this, library fusions but convolutions: the largest array measured faster with them
# (the seed CNN's step at batch 512); the smallest measured slower is the speedrun's, 90 MiB.
LIBRARY_FUSIONS_MAX_BYTES = 64 * 2**20
_OPTION = "xla_cpu_experimental_ynn_fusion_type"
# Fusion types for programs up to LIBRARY_FUSIONS_MAX_BYTES: this jaxlib's defaults but
# convolutions. Named rather than "the defaults less one": XLA's defaults change between
# releases.
_MIDDLING_PROGRAM_FUSIONS = "LIBRARY_FUSION_TYPE_REDUCE,LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"
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
    """{option: value} for `lowered.compile` on a CPU, by the bytes of the program's largest
    floating-point array: None (XLA's defaults) up to XLA_DEFAULTS_MAX_BYTES, library fusions
    but convolutions up to LIBRARY_FUSIONS_MAX_BYTES, none above. None on other backends."""
    if jax.default_backend() != "cpu":
        return None
    largest = largest_float_array_bytes(lowered)
    if largest <= XLA_DEFAULTS_MAX_BYTES:
        return None
    if largest <= LIBRARY_FUSIONS_MAX_BYTES:
        return {_OPTION: _MIDDLING_PROGRAM_FUSIONS}
    return {_OPTION: ""}


def compile_for_size(lowered: jax.stages.Lowered) -> jax.stages.Compiled:
    """`lowered.compile()` with `compiler_options(lowered)`. A jaxlib that predates the
    option, or the fusion types it names, compiles with its defaults."""
    options = compiler_options(lowered)
    if options is None:
        return lowered.compile()
    try:
        return lowered.compile(compiler_options=options)
    except jax.errors.JaxRuntimeError as error:
        unknown = (f"No such compile option: '{_OPTION}'", f"While setting option {_OPTION},")
        if not any(message in str(error) for message in unknown):
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
