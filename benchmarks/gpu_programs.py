"""Compile the seed recipe's training programs for an H100 without one, and report what
XLA:GPU makes of one training step: the kernels it launches and how its epoch loop runs.

Usage: python benchmarks/gpu_programs.py [--batch 4] [--unroll 1 4]
       [--graph-paths fused-pallas-all] [--out benchmarks/results]

Step times need a GPU; what the GPU's compiler does with each path's program does not. JAX's
CUDA plugin compiles ahead of time for a GPU it is only told about (a PJRT topology made from
a target description, `H100` below), on a machine with neither GPU nor driver. It is not a
jaxcifar dependency: `pip install "jax[cuda12]==<this JAX's version>"` into a venv of its own
(about 5.5 GB with CUDA's libraries; their ptxas compiles the Triton kernels), then
`pip install -e .` there. For each path, XLA:GPU's optimised program gives:
- kernels per step (`xla_cost.kernel_counts`) by kind: fusions (kCustom: XLA's Triton
  GEMMs), custom calls by target (cuDNN's convolutions, the Pallas paths' Triton kernels),
  copies; for the fused paths the epoch loop's body, divided by its unroll;
- the bytes those kernels read and write a step (`xla_cost.kernel_bytes`: every kernel
  reads its operands from memory and writes its result; a model of memory traffic, what
  bounds the step's many memory-bound kernels on a GPU);
- whether XLA proved the epoch loop's trip count (`xla_cost.loop_trip_count`): without one,
  every iteration waits for its condition to reach the host;
- how much of the epoch loop runs as CUDA graphs (`xla_cost.loop_command_buffers`, from the
  thunk sequence XLA dumps): what the host launches each iteration; with `--graph-paths`,
  again as `FusedRunner(graph=True)` compiles it;
- the compile time on this machine.
`loop` is `train.make_train_step`'s program: what the loop path runs a step, and, with a
batch gather, what the chunk and scan paths' loops run (their programs live inside
`epochs.EpochRunner`, which puts the data on real devices). Autotuning needs a GPU, so XLA
takes its default GEMM and convolution algorithms: kernel counts are the GPU's, speeds may
not be. Writes results/gpu-programs-h100.md and .json (and prints the table).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import topologies
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from bench_paths import RESULTS
from jaxcifar import train
from jaxcifar.atomic import atomic_write_text
from jaxcifar.bench.xla_cost import (
    kernel_bytes, kernel_counts, loop_command_buffers, loop_trip_count,
)
from jaxcifar.commands.arguments import positive_int
from jaxcifar.config import RunConfig
from jaxcifar.data.dataset import Dataset
from jaxcifar.data.sources import CLASS_NAMES
from jaxcifar.fused import epoch
from jaxcifar.speedrun import optimizer as speedrun_optimizer
from jaxcifar.speedrun import recipe as speedrun_recipe
from jaxcifar.speedrun import train as speedrun_train

# What XLA:GPU reads of the GPU it compiles for (stream_executor's GpuTargetConfigProto, in
# protobuf text format): NVIDIA's figures for the H100 SXM (80 GB). The H200 is the same chip
# with more and faster memory, so it gets the same programs.
H100 = {
    "gpu_device_info": {
        "cuda_compute_capability": {"major": 9},
        "core_count": 132,  # streaming multiprocessors
        "fpus_per_core": 128,
        "threads_per_warp": 32,
        "threads_per_block_limit": 1024,
        "threads_per_core_limit": 2048,
        "block_dim_limit_x": 2**31 - 1,
        "block_dim_limit_y": 65535,
        "block_dim_limit_z": 65535,
        "registers_per_core_limit": 65536,
        "registers_per_block_limit": 65536,
        "shared_memory_per_block": 48 * 1024,
        "shared_memory_per_block_optin": 227 * 1024,
        "shared_memory_per_core": 228 * 1024,
        "l2_cache_size": 50 * 2**20,
        "clock_rate_ghz": 1.98,
        "memory_bandwidth": 3_352_320_000_000,  # bytes/s
        "device_memory_size": 80 * 10**9,
        "driver_version": "12.8.0",
        "runtime_version": "12.8.0",
    },
    "platform_name": "CUDA",
    "dnn_version_info": {"major": 9, "minor": 8},
    "device_description_str": "NVIDIA H100 80GB HBM3",
}
CIFAR_TRAIN_EXAMPLES = 50_000


def text_proto(fields: dict) -> str:
    """`fields` (names to numbers, strings or nested dicts) in protobuf text format."""
    lines = []
    for name, value in fields.items():
        if isinstance(value, dict):
            lines.append(f"{name} {{ {text_proto(value)} }}")
        else:
            lines.append(f"{name}: {json.dumps(value)}")
    return " ".join(lines)


def gpu_mesh(target: dict = H100) -> Mesh:
    """A one-device mesh of the GPU `target` describes, for compiling only."""
    topology = topologies.get_topology_desc(
        platform="cuda", topology_name="target", target_config=text_proto(target),
        topology="1x1x1",
    )  # fmt: skip
    return topologies.make_mesh(topology, (1,), ("data",))


def on_the_gpu(mesh: Mesh) -> Callable[[Any], Any]:
    """A function from a pytree of arrays (or shape structs) to one of shape structs of the
    same shapes and dtypes, placed on `mesh`'s GPU: what `jit(...).trace` compiles for."""
    on_gpu = NamedSharding(mesh, PartitionSpec())

    def specs(tree: Any) -> Any:
        return jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x), sharding=on_gpu),
            tree,
        )

    return specs


@contextlib.contextmanager
def tracing_for_a_gpu() -> Iterator[None]:
    """Trace as on a GPU: code that picks its form by `jax.default_backend()` when traced
    (`layers.conv`'s gradients, written for XLA:CPU's library kernels on a CPU; the Pallas
    kernels, interpreted on a CPU, Triton kernels otherwise) must not see this machine's
    CPU."""
    default_backend = jax.default_backend
    jax.default_backend = lambda: "gpu"
    try:
        yield
    finally:
        jax.default_backend = default_backend


def program_rows(mesh: Mesh, batch: int, unrolls: list[int],
                 graph_paths: list[str]) -> Iterator[dict]:  # fmt: skip
    """One row per path (and unroll, for the fused paths; and again with the epoch as one
    CUDA graph for `graph_paths`), each compiled for `mesh`'s GPU."""
    config = RunConfig(batch_size=batch)
    dataset = Dataset(
        np.zeros((CIFAR_TRAIN_EXAMPLES, 32, 32, 3), np.uint8),
        np.zeros(CIFAR_TRAIN_EXAMPLES, np.int32), CLASS_NAMES["cifar10"],
    )  # fmt: skip
    setup = train.build_setup(config, dataset)
    state = train.init_state(config, setup)
    specs = on_the_gpu(mesh)
    step = train.make_train_step(setup, mesh=mesh)
    batch_arrays = (dataset.images[:batch], dataset.labels[:batch])
    with tracing_for_a_gpu():
        traced = step.trace(*specs((state, batch_arrays)), specs(jax.random.key(0)))
    yield _row("loop", None, traced, loop=False)
    for path in epoch.PALLAS_PARTS:
        for unroll in unrolls:
            runner = epoch.FusedRunner(config, dataset, path=path, unroll=unroll)
            args = (epoch.to_fused_state(state), dataset.images, dataset.labels, np.int32(1))
            with tracing_for_a_gpu():  # the program FusedRunner.compile compiles
                traced = runner._run_epoch.trace(*specs(args))
            yield _row(path, unroll, traced, loop=True)
            if path in graph_paths:  # as FusedRunner(graph=True) compiles it on a GPU
                yield _row(path, unroll, traced, loop=True, options=epoch.GRAPH_EPOCH_OPTIONS)
    yield from speedrun_rows(mesh)


def speedrun_rows(mesh: Mesh) -> Iterator[dict]:
    """`jaxcifar speedrun`'s epochs (airbench94's recipe, bfloat16, batch 1,024) on CIFAR-10,
    one whose steps train the whitening bias (its first 3) and one whose steps do not (the
    other 7): each loop's body is one step."""
    recipe = speedrun_recipe.Recipe()
    plan = speedrun_recipe.plan(recipe, CIFAR_TRAIN_EXAMPLES)
    tx = speedrun_optimizer.build_optimizer(recipe, plan.total_steps)
    specs = on_the_gpu(mesh)
    data = specs(speedrun_train.DeviceData(
        jax.ShapeDtypeStruct((CIFAR_TRAIN_EXAMPLES, 32, 32, 3), jnp.uint8),
        jax.ShapeDtypeStruct((CIFAR_TRAIN_EXAMPLES,), jnp.int32),
        jax.ShapeDtypeStruct((3,), jnp.float32), jax.ShapeDtypeStruct((3,), jnp.float32),
    ))  # fmt: skip
    init = functools.partial(speedrun_train.init_state, recipe, tx, 10)
    state = specs(jax.eval_shape(init, jax.random.key(0), data))
    for whiten_bias in (True, False):
        run_epoch = functools.partial(
            speedrun_train.scan_epoch, recipe, plan, tx, plan.epoch_steps(0),
            whiten_bias=whiten_bias,
        )  # fmt: skip
        with tracing_for_a_gpu():
            traced = jax.jit(run_epoch, donate_argnums=0).trace(state, data, specs(jnp.int32(1)))
        frozen = "" if whiten_bias else ", whitening bias frozen"
        path = f"speedrun ({recipe.dtype}, batch {recipe.batch_size}{frozen})"
        yield _row(path, None, traced, loop=True, options=speedrun_train.XLA_OPTIONS)


def _row(path: str, unroll: int | None, traced, *, loop: bool,
         options: dict[str, Any] | None = None) -> dict:  # fmt: skip
    lowered = traced.lower(lowering_platforms=("cuda",))
    with tempfile.TemporaryDirectory() as dump:
        start = time.perf_counter()
        hlo = lowered.compile({**(options or {}), "xla_dump_to": dump}).as_text()
        seconds = time.perf_counter() - start
        graphs = loop_command_buffers(thunk_sequence(Path(dump))) if loop else None
    counts = kernel_counts(hlo, loop_body=loop, by_kind=True)
    per_step = {kind: count / (unroll or 1) for kind, count in sorted(counts.items())}
    return {
        "path": path, "unroll": unroll, "options": options or {},
        "kernels_per_step": sum(per_step.values()), "kernels_by_kind": per_step,
        "kernel_megabytes_per_step": None if _PALLAS in counts
        else kernel_bytes(hlo, loop_body=loop) / (unroll or 1) / 1e6,
        "epoch_loop": loop, "trip_count": loop_trip_count(hlo) if loop else None,
        "command_buffers": graphs, "compile_seconds": round(seconds, 2),
    }  # fmt: skip


# How a Pallas kernel shows in XLA:GPU's program (`kernel_counts(by_kind=True)`). Its bytes
# are not its operands': fused-pallas-all's kernels index the whole training set for their
# batch.
_PALLAS = "custom-call __gpu$xla.gpu.triton"


def thunk_sequence(dump: Path) -> str:
    """The thunk sequence (what XLA:GPU's runtime executes: kernels, copies, loops and
    command buffers, nested) that XLA dumped into folder `dump` for its one program: after
    XLA's thunk passes (which form the command buffers) where it wrote that file."""
    for pattern in ("*.thunk_sequence_after_thunk_passes.txt", "*.thunk_sequence.txt"):
        found = sorted(dump.glob(pattern))
        if len(found) == 1:
            return found[0].read_text()
    names = sorted(path.name for path in dump.iterdir())
    raise RuntimeError(f"XLA dumped no single thunk sequence into {dump}: {names}")


def render_markdown(rows: list[dict], batch: int, device: str) -> str:
    """`program_rows`' rows as a markdown table under a title naming `device` and the seed
    recipe's `batch`."""
    lines = [
        f"# Training steps as XLA:GPU compiles them for an {device}",
        "",
        f"The seed recipe's paths at batch {batch} and `jaxcifar speedrun`'s epochs, compiled "
        f"ahead of time on a machine without a GPU (JAX {jax.__version__}'s CUDA plugin; "
        "`benchmarks/gpu_programs.py`). Kernels: instructions of one step's optimised "
        "program that launch work; for the epochs the loop's body over its unroll. MB: what "
        "those kernels read and write a step, each operand read from memory and each result "
        "written once (`xla_cost.kernel_bytes`, a model; none for Pallas kernels, which read "
        "what they index). "
        "Trip count: the epoch loop's, as XLA proved it (none: each iteration waits for its "
        "condition on the host). CUDA graphs: the part of the epoch XLA runs as command "
        "buffers (loop body: the host launches one an iteration; whole loop: one an epoch, "
        "the GPU runs the loop); graph epoch: `FusedRunner(graph=True)`'s compiler options. "
        "Each program compiles as its runner compiles it (the speedrun's with its "
        "`XLA_OPTIONS`).",
        "",
        "| path | unroll | kernels/step | MB/step | by kind | loop trip count | CUDA graphs "
        "| compile s (CPU) |",
        "|---|---:|---:|---:|---|---:|---|---:|",
    ]
    for row in rows:
        kinds = ", ".join(f"{kind} {n:g}" for kind, n in row["kernels_by_kind"].items())
        trip = (row["trip_count"] or "none") if row["epoch_loop"] else "-"
        graph = "xla_gpu_enable_command_buffer" in row["options"]
        path = row["path"] + (" (graph epoch)" if graph else "")
        megabytes = row["kernel_megabytes_per_step"]
        megabytes = "-" if megabytes is None else f"{megabytes:,.1f}"
        lines.append(
            f"| {path} | {row['unroll'] or '-'} | {row['kernels_per_step']:g} "
            f"| {megabytes} | {kinds} "
            f"| {trip} | {row['command_buffers'] or '-'} | {row['compile_seconds']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=positive_int, default=4)
    parser.add_argument("--unroll", type=positive_int, nargs="+", default=[1, 4])
    parser.add_argument("--graph-paths", nargs="*", choices=list(epoch.PALLAS_PARTS),
                        default=["fused-pallas-all"],
                        help="fused paths to compile again with the epoch as one CUDA graph "
                        "(the others' convolutions leave their loops outside any graph)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    device = H100["device_description_str"]
    rows = []
    for row in program_rows(gpu_mesh(), args.batch, args.unroll, args.graph_paths):
        print(row, flush=True)
        rows.append(row)
    markdown = render_markdown(rows, args.batch, device)
    result = {"device": device, "jax": jax.__version__, "batch_size": args.batch, "rows": rows}
    atomic_write_text(args.out / "gpu-programs-h100.json", json.dumps(result, indent=1) + "\n")
    atomic_write_text(args.out / "gpu-programs-h100.md", markdown)
    print(markdown, end="")


if __name__ == "__main__":
    main()
