"""Timed seed-recipe runs by path, and their results file (a JSON list plus a markdown table).

A path is one of `jaxcifar.train`'s epoch modes: "loop" (a Python loop of jitted steps),
"chunk" (`lax.scan`s of 100 steps; the default on a CPU), "scan" (one `lax.scan` per epoch;
the default elsewhere), "fused", "fused-pallas" and "fused-pallas-all" (the fused path,
`FusedRunner`, in plain JAX, with the head step as two Pallas kernels, or the whole step as
six).
Each row is `{"device", "epochs", "batch_size", "wall_seconds" (compilation included),
"compile_seconds", "test_accuracy", "path"}` plus what explains it: the training and test
set sizes, the kernels one step launches (from the compiled HLO), the final epoch's mean
training loss, and whether Pallas ran in interpret mode.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcifar import compiling, epochs, train
from jaxcifar.atomic import write_json_and_markdown
from jaxcifar.bench.device_profile import traced_event_times
from jaxcifar.bench.xla_cost import kernel_counts
from jaxcifar.config import RunConfig
from jaxcifar.data.dataset import Dataset
from jaxcifar.fused.epoch import PALLAS_PARTS, FusedRunner
from jaxcifar.bench.environment import device_name

PATHS = ("loop", "chunk", "scan", *train.FUSED_MODES)


def measure_path(
    path: str, config: RunConfig, train_set: Dataset, test_set: Dataset, *, unroll: int = 1,
    graph: bool = False, profile: bool = False, log: Callable[[str], None] = print,
) -> dict[str, Any]:  # fmt: skip
    """Train `config` from scratch along `path` (one of PATHS) and return its results row;
    a fused path `unroll` steps per loop iteration and, with `graph`, each epoch compiled to
    be one CUDA graph where it fits (`FusedRunner`).

    The wall time runs from building the first program to the last epoch's state being
    ready: compilation and training, not the test evaluation after it. With `profile`, one
    more epoch then runs under JAX's profiler, and the row's "profile" holds the device
    time per kernel (`bench.device_profile`; [] without device planes, None if it failed).
    """
    if path not in PATHS:
        raise ValueError(f"unknown path {path!r}; expected one of {', '.join(PATHS)}")
    if graph and path not in train.FUSED_MODES:
        raise ValueError(f"graph: only the fused paths compile an epoch as one program, not {path}")
    setup = train.build_setup(config, train_set)
    state = train.init_state(config, setup)
    initial_params = jax.tree.map(jnp.copy, jax.block_until_ready(state.params))
    start = time.perf_counter()
    if path in train.FUSED_MODES:
        runner = FusedRunner(config, train_set, path=path, unroll=unroll, graph=graph)
    else:
        runner = train.make_epoch_runner(path, config, setup, train_set)
    for epoch in range(1, config.epochs + 1):
        losses: list[np.ndarray] = []  # this epoch's, as the runner reports them
        state = runner.run(state, epoch, lambda first, loss, correct: losses.append(loss))
    params = jax.block_until_ready(state.params)
    wall = time.perf_counter() - start
    test = train.evaluate(train.make_eval_step(setup.model, dtype=config.dtype), params, test_set)
    # Counting parses HLO text, whose shape another backend or XLA release may change in ways
    # no parser error foresees (a missing ENTRY, a loop without a body): the timing stands.
    try:
        kernels = _step_kernels(path, runner, setup, initial_params, train_set)
    except Exception as error:
        log(f"{path}: kernels per step not counted ({type(error).__name__}: {error})")
        kernels = None
    row = {
        "device": device_name(),
        "jax": jax.__version__,
        "epochs": config.epochs,
        "batch_size": config.batch_size,
        "wall_seconds": wall,
        "compile_seconds": runner.compile_seconds,
        "test_accuracy": test.accuracy,
        "path": path,
        "unroll": unroll if path in train.FUSED_MODES else None,
        "graph": graph,
        "train_images": len(train_set),
        "test_images": len(test_set),
        "steps": runner.steps * config.epochs,
        "kernels_per_step": None if kernels is None else sum(kernels.values()),
        "kernel_counts": kernels,
        "last_epoch_train_loss": train.mean_loss(losses),  # as `fit` records it
        "pallas_interpret": bool(PALLAS_PARTS.get(path)) and jax.default_backend() == "cpu",
    }
    if profile:
        # After the evaluation: the traced epoch takes (donates) the trained state.
        try:
            row["profile"] = traced_event_times(
                lambda: runner.run(state, config.epochs + 1, lambda *_: None).params
            )
        except Exception as error:  # the timed row stands without its profile
            log(f"{path}: not profiled ({type(error).__name__}: {error})")
            row["profile"] = None
    log(
        f"{run_label(path, unroll, graph)}: {wall:.2f} s wall "
        f"({runner.compile_seconds:.2f} s compiling), {row['steps']} steps, "
        f"test accuracy {test.accuracy:.4f}, {row['kernels_per_step']} kernels per step"
    )
    return row


def run_label(path: str, unroll: int, graph: bool = False) -> str:
    """A run's name in logs and failure lines: its path, with the unroll (and the graph
    epoch) for a fused path."""
    if path not in train.FUSED_MODES:
        return path
    return f"{path} (unroll {unroll}{', graph epoch' if graph else ''})"


def _step_kernels(path: str, runner: epochs.Runner, setup: train.Setup, params: Any,
                  dataset: Dataset) -> dict[str, float] | None:  # fmt: skip
    """Opcode -> count of the kernels one training step launches on this backend: the
    jitted step's program for the loop path, the loop body of the epoch program for the
    fused paths (which holds one step, its batch gather included; with unroll u, u steps, so the
    counts are divided by u). None for chunk and scan, whose programs are internal to
    `epochs.EpochRunner`; their body is the loop path's step plus the batch gather."""
    if path in ("chunk", "scan"):
        return None
    state = train.TrainState(params, setup.optimizer.init(params), jnp.zeros((), jnp.int32))
    if path == "loop":
        config = runner.config
        batch = (dataset.images[: config.batch_size], dataset.labels[: config.batch_size])
        # Compiled as the loop path compiles one step: XLA's defaults would count YNNPACK's
        # fusions.
        step = train.make_train_step(setup, dtype=config.dtype, augment=config.augment)
        lowered = step.lower(state, batch, jax.random.key(0))
        return dict(kernel_counts(compiling.compile_program(lowered).as_text()))
    counts = kernel_counts(runner.compile(state).as_text(), loop_body=True)
    return {op: count / runner.unroll for op, count in counts.items()}


def render_markdown(rows: Sequence[dict[str, Any]], failures: Sequence[str] = ()) -> str:
    """The rows as one markdown table, then the paths that failed and why."""
    lines = [
        f"# Seed recipe by path, {rows[0]['device'] if rows else '(no rows)'}",
        "",
        "wall s: compilation + training (test evaluation excluded); kernels: instructions that "
        "launch work in one step's compiled program (fusions, library calls, copies).",
        "",
        "| path | unroll | train images | epochs | steps | wall s | compile s | ms/step (warm) "
        "| kernels/step | last-epoch loss | test accuracy |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        warm = (row["wall_seconds"] - row["compile_seconds"]) / row["steps"] * 1e3
        kernels = "-" if row["kernels_per_step"] is None else f"{row['kernels_per_step']:.0f}"
        path = row["path"] + (" (interpret)" if row["pallas_interpret"] else "")
        path += " (graph epoch)" if row.get("graph") else ""
        lines.append(
            f"| {path} | {row['unroll'] or '-'} | {row['train_images']} | {row['epochs']} "
            f"| {row['steps']} | {row['wall_seconds']:.2f} | {row['compile_seconds']:.2f} "
            f"| {warm:.3f} | {kernels} | {row['last_epoch_train_loss']:.4f} "
            f"| {row['test_accuracy']:.4f} |"
        )
    for row in rows:
        if row.get("profile"):
            lines += ["", *_profile_markdown(row)]
    if failures:
        lines += ["", "Failed:", "", *(f"- {failure}" for failure in failures)]
    return "\n".join(lines) + "\n"


def _profile_markdown(row: dict[str, Any]) -> list[str]:
    """A profiled row's device time per kernel, as markdown lines."""
    steps = row["steps"] // row["epochs"]  # the traced epoch's
    lines = [
        f"## Device time by kernel: {run_label(row['path'], row['unroll'], row.get('graph'))}, "
        "one more epoch",
        "",
        f"{steps} steps; us/step: the kernel's total over the epoch's steps.",
        "",
        "| kernel | plane / line | launches | total ms | mean us | us/step |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for event in row["profile"]:
        lines.append(
            f"| {event['name']} | {event['plane']} / {event['line']} | {event['count']} "
            f"| {event['total_us'] / 1e3:.2f} | {event['mean_us']:.2f} "
            f"| {event['total_us'] / steps:.2f} |"
        )
    return lines


def read_results(json_path: str | os.PathLike[str]) -> tuple[list[dict[str, Any]], list[str]]:
    """The rows and failures that `write_results` wrote to `json_path` (the failures from the
    markdown beside it); ([], []) when there is no such file yet."""
    json_path = Path(json_path)
    if not json_path.exists():
        return [], []
    rows = json.loads(json_path.read_text())
    markdown = json_path.with_suffix(".md")
    lines = markdown.read_text().splitlines() if markdown.exists() else []
    failed = lines[lines.index("Failed:") + 1 :] if "Failed:" in lines else []
    return rows, [line[2:] for line in failed if line.startswith("- ")]


def write_results(
    rows: Sequence[dict[str, Any]], json_path: str | os.PathLike[str], failures: Sequence[str] = ()
) -> list[Path]:
    """Write `rows` to `json_path` as a JSON list and the markdown table, with `failures`
    ("path: error" lines), beside it (.md); return both paths."""
    return write_json_and_markdown(json_path, list(rows), render_markdown(rows, failures))
