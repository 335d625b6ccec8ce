"""Compile the fused path's Pallas kernels for an H100 (sm_90) without a GPU, and report what
each needs: registers, bytes spilled to the stack, shared memory.

Usage: python benchmarks/triton_resources.py [--batch 4] [--warps N] [--stages N]
       [--out benchmarks/results]

Lowering a function for CUDA on a CPU (`.lower(lowering_platforms=("cuda",))`, what the tests
do) runs Pallas' Triton lowering rules, but not Triton's compiler: that is where a kernel's
registers and shared memory are decided, and where one that needs more shared memory than the
GPU has (227 KiB a block on an H100) fails, on the GPU machine only. This script captures the
Triton IR of each kernel of `--epoch-mode fused-pallas-all`'s training step as Pallas hands
it to XLA, and compiles it with the `triton` package (`pip install triton`; not a jaxcifar
dependency) and reads the cubin's resource usage with Triton's bundled cuobjdump. That Triton
need not be the one inside the GPU machine's jaxlib, so the figures are indicative. Each
kernel compiles with the warps and pipeline stages it asks Pallas for; `--warps` and
`--stages` try others for all. Writes results/triton-resources-sm90.md (and prints it).
"""

from __future__ import annotations

import argparse
import functools
import re
import subprocess
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp

from bench_paths import RESULTS
from jaxcifar.atomic import atomic_write_text
from jaxcifar.commands.arguments import positive_int
from jaxcifar.fused import pallas_convs, pallas_head, step
from jaxcifar.models import cnn

H100_SHARED_MEMORY_PER_BLOCK = 232_448  # bytes: 227 KiB, the opt-in maximum on sm_90


def kernel_irs(batch: int) -> list[dict]:
    """{"kernel" (name), "grid", "warps", "stages", "ir" (Triton IR text)} of each Pallas
    kernel of one fused-pallas-all training step at `batch`, in the order the step launches
    them, lowered for CUDA (no GPU needed).

    Reads them where Pallas lowers each kernel, a private JAX function: a JAX release that
    moves it makes this raise AttributeError, not report wrong figures."""
    from jax._src.pallas.triton import pallas_call_registration as registration

    kernels = []
    lower = registration.lowering.lower_jaxpr_to_triton_module

    def capture(jaxpr, grid_mapping, *args, **kwargs):
        result = lower(jaxpr, grid_mapping, *args, **kwargs)
        asm = result.module.operation.get_asm(enable_debug_info=False)
        kernels.append(
            {"kernel": jaxpr.debug_info.func_name, "grid": tuple(result.grid), "ir": asm}
        )
        return result

    train_step = step.make_train_step(
        functools.partial(pallas_head.batch_head_train_step, interpret=False),
        lambda count: jnp.float32(0.001),
        0.9,
        functools.partial(pallas_convs.features_train_step, interpret=False),
    )
    params = cnn.init(jax.random.key(0))
    state = step.FusedState(params, params, jnp.zeros((), jnp.int32))
    examples = 50_000  # CIFAR-10's training set, which the kernels read the batch from
    steps = examples // batch
    batch_refs = step.StepBatch(
        jax.ShapeDtypeStruct((examples, 32, 32, 3), jnp.uint8),
        jax.ShapeDtypeStruct((examples,), jnp.int32),
        jax.ShapeDtypeStruct((steps, batch), jnp.int32),
        jax.ShapeDtypeStruct((steps, 4), jnp.uint32),
        jax.ShapeDtypeStruct((), jnp.int32),
    )
    records = (
        jax.ShapeDtypeStruct((steps,), jnp.float32), jax.ShapeDtypeStruct((steps,), jnp.int32)
    )
    registration.lowering.lower_jaxpr_to_triton_module = capture
    try:
        lowered = jax.jit(train_step).trace(state, batch_refs, records).lower(
            lowering_platforms=("cuda",)
        )
    finally:
        registration.lowering.lower_jaxpr_to_triton_module = lower
    # Each custom call's settings, in the same order as the kernels were lowered.
    settings = re.findall(r"num_stages = (\d+) : i32, num_warps = (\d+) : i32", lowered.as_text())
    if len(settings) != len(kernels):
        raise RuntimeError(f"{len(kernels)} kernels lowered but {len(settings)} settings found")
    for kernel, (stages, warps) in zip(kernels, settings):
        kernel.update(stages=int(stages), warps=int(warps))
    return kernels


def compile_resources(ir: str, warps: int, stages: int) -> dict[str, int]:
    """{"registers", "stack_bytes", "shared_bytes"} of Triton IR `ir` compiled for sm_90."""
    import triton
    from triton.backends.compiler import GPUTarget

    with tempfile.TemporaryDirectory() as folder:
        source = Path(folder) / "kernel.ttir"
        source.write_text(ir)
        compiled = triton.compile(
            str(source), target=GPUTarget("cuda", 90, 32),
            options={"num_warps": warps, "num_stages": stages},
        )  # fmt: skip
        cubin = Path(folder) / "kernel.cubin"
        cubin.write_bytes(compiled.asm["cubin"])
        cuobjdump = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
        usage = subprocess.run(
            [str(cuobjdump), "--dump-resource-usage", str(cubin)],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
    registers, stack = (int(re.search(rf"{key}:(\d+)", usage)[1]) for key in ("REG", "STACK"))
    return {"registers": registers, "stack_bytes": stack, "shared_bytes": compiled.metadata.shared}


def render_markdown(rows: list[dict], batch: int) -> str:
    import triton

    lines = [
        f"# Pallas kernels of fused-pallas-all compiled for sm_90 (H100), batch {batch}",
        "",
        f"Triton {triton.__version__} from PyPI (not the GPU machine's jaxlib's); shared memory "
        f"against the H100's {H100_SHARED_MEMORY_PER_BLOCK:,} bytes a block.",
        "",
        "| kernel | grid | warps | stages | registers | spilled (stack bytes) "
        "| shared memory (bytes) | fits |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        fits = "yes" if row["shared_bytes"] <= H100_SHARED_MEMORY_PER_BLOCK else "**no**"
        lines.append(
            f"| {row['kernel']} | {'x'.join(map(str, row['grid'])) or 1} | {row['warps']} "
            f"| {row['stages']} | {row['registers']} | {row['stack_bytes']} "
            f"| {row['shared_bytes']:,} | {fits} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=positive_int, default=4)
    parser.add_argument("--warps", type=positive_int, help="compile every kernel with N warps")
    parser.add_argument("--stages", type=positive_int, help="... and N pipeline stages")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    rows = []
    for kernel in kernel_irs(args.batch):
        kernel["warps"] = args.warps or kernel["warps"]
        kernel["stages"] = args.stages or kernel["stages"]
        ir = kernel.pop("ir")  # before the row copies the kernel: the IR is no column
        rows.append({**kernel, **compile_resources(ir, kernel["warps"], kernel["stages"])})
    markdown = render_markdown(rows, args.batch)
    path = args.out / "triton-resources-sm90.md"
    atomic_write_text(path, markdown)
    print(markdown, end="")
    print(path)


if __name__ == "__main__":
    main()
