"""Timed speedrun runs and their results file: `{"device", "runs": [...]}` plus a markdown table.

Each run row is `{"system", "seed", "dtype", "train_seconds", "cold_seconds",
"tta_test_accuracy"}` (seed: the run's, null where the system takes none of ours; dtype: the
compute dtype, airbench94's is float16). `jaxcifar speedrun` adds `"model": {"file", "run",
"seed"}`: which run's model its model.msgpack holds.
`train_seconds` is warm: whitening, training and TTA test predictions with every program
already compiled (what airbench's reported time covers). `cold_seconds` is set on a system's
first row only: what the first run cost a fresh process, compilation included (for us,
compile + first run, the warm-up where there is one; a persistent-cache hit makes it small);
null on the other rows.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from jaxcifar.atomic import write_json_and_markdown
from jaxcifar.data.dataset import Dataset
from jaxcifar.speedrun.recipe import Recipe
from jaxcifar.speedrun.train import RunResult, Speedrun

SYSTEM = "jaxcifar-fast"
# The datasets' names in titles. Results files written before they recorded their dataset
# (`benchmarks/speedrun.py`'s still do not) are CIFAR-10's.
DATASET_TITLES = {"cifar10": "CIFAR-10", "mnist": "MNIST", "fashion_mnist": "Fashion-MNIST"}


def run_row(system: str, dtype: str, train_seconds: float, cold_seconds: float | None,
            accuracy: float, seed: int | None = None) -> dict[str, Any]:  # fmt: skip
    """One run's row of speedrun.json: `system` ("jaxcifar-fast" or "airbench94"), its
    compute `dtype`, warm and cold seconds, TTA test accuracy in [0, 1] and the run's seed."""
    return {
        "system": system,
        "seed": seed,
        "dtype": dtype,
        "train_seconds": train_seconds,
        "cold_seconds": cold_seconds,
        "tta_test_accuracy": accuracy,
    }


def measure(
    recipe: Recipe,
    train_set: Dataset,
    test_set: Dataset,
    *,
    runs: int,
    seed: int = 0,
    warmup: bool = False,
    epoch_mode: str = "auto",
    log: Callable[[str], None] = print,
    on_row: Callable[[dict[str, Any]], None] = lambda row: None,
    on_result: Callable[[Speedrun, RunResult], None] = lambda speedrun, result: None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Compile once, then `runs` runs from seeds seed, seed+1, ...: (run rows, details:
    compile seconds, epoch mode, step counts, per-run epoch losses). `warmup`: one untimed
    run first (seed `seed + runs`), as airbench's benchmark makes, so that no timed run is
    a program's first execution (a GPU loads each program's kernels then). `on_row` gets
    each row as soon as its run ends (to save it before a time limit can strike),
    `on_result` the run itself (its trained state), after its time is taken."""
    speedrun = Speedrun(recipe, train_set, test_set, epoch_mode=epoch_mode)
    plan = speedrun.plan
    log(
        f"{len(train_set)} training / {len(test_set)} test images; {plan.total_steps} "
        f"step{'s' * (plan.total_steps != 1)} "
        f"({plan.steps_per_epoch} per epoch) of {recipe.batch_size}; epoch mode {speedrun.mode}; "
        f"compiled in {speedrun.compile_seconds:.2f} s"
    )
    first_run = None
    if warmup:
        first_run = speedrun.run(seed + runs).seconds
        log(f"warm-up run (seed {seed + runs}, untimed): {first_run:.2f} s")
    rows, losses = [], []
    for i in range(runs):
        result = speedrun.run(seed + i)
        first_run = result.seconds if first_run is None else first_run
        cold = speedrun.compile_seconds + first_run if i == 0 else None
        rows.append(
            run_row(SYSTEM, recipe.dtype, result.seconds, cold, result.tta_accuracy, result.seed)
        )
        on_row(rows[-1])
        on_result(speedrun, result)
        losses.append(result.epoch_losses)
        log(
            f"run {i + 1}/{runs} (seed {result.seed}): {result.seconds:.2f} s "
            f"{'warm' if warmup or i else 'as the programs first run'}, TTA test "
            f"accuracy {result.tta_accuracy:.4f}, epoch losses "
            + " ".join(f"{loss:.3f}" for loss in result.epoch_losses)
        )
    details = {
        "compile_seconds": speedrun.compile_seconds,
        "warmup": warmup,
        "epoch_mode": speedrun.mode,
        "plan": plan._asdict(),
        "epoch_losses": losses,
    }
    return rows, details


def summary(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per system and dtype: run count, mean and standard deviation (None for one run) of
    train seconds and accuracy, and the cold seconds of its first run."""
    out = []
    for system, dtype in dict.fromkeys((row["system"], row["dtype"]) for row in rows):
        mine = [row for row in rows if (row["system"], row["dtype"]) == (system, dtype)]
        seconds = [row["train_seconds"] for row in mine]
        accuracy = [row["tta_test_accuracy"] for row in mine]
        out.append({
            "system": system,
            "dtype": dtype,
            "runs": len(mine),
            "train_seconds_mean": statistics.fmean(seconds),
            "train_seconds_sd": statistics.stdev(seconds) if len(mine) > 1 else None,
            "tta_test_accuracy_mean": statistics.fmean(accuracy),
            "tta_test_accuracy_sd": statistics.stdev(accuracy) if len(mine) > 1 else None,
            "cold_seconds": mine[0]["cold_seconds"],
        })  # fmt: skip
    return out


def _cell(value: float | None, spec: str) -> str:
    """`value` formatted by `spec`, or "-" where there is none (e.g. the sd of one run)."""
    return "-" if value is None else format(value, spec)


def render_markdown(results: dict[str, Any]) -> str:
    """The results as a markdown table per system, then every run, then which run's model
    model.msgpack holds (when the results say)."""
    dataset = results.get("dataset", "cifar10")
    title = DATASET_TITLES.get(dataset, dataset)
    # Without a warm-up run (the CLI's), the first timed run is its programs' first execution;
    # results written before they said which are told apart from neither.
    timed = {
        True: "warm seconds per run",
        False: "seconds per run, compilation excluded (without a warm-up run: the first is its "
        "programs' first execution)",
        None: "seconds per run, compilation excluded",
    }[results.get("warmup")]
    lines = [
        f"# {title} speedrun, {results['device']}",
        "",
        f"train s: {timed} (whitening + training + TTA predictions); cold s: the first run of a "
        "fresh process, compilation included.",
        "",
        "| system | dtype | runs | train s (mean ± sd) | cold s | TTA test accuracy (mean ± sd) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for s in summary(results["runs"]):
        lines.append(
            f"| {s['system']} | {s['dtype']} | {s['runs']} | {s['train_seconds_mean']:.3f} ± "
            f"{_cell(s['train_seconds_sd'], '.3f')} | {_cell(s['cold_seconds'], '.2f')} "
            f"| {s['tta_test_accuracy_mean']:.4f} ± {_cell(s['tta_test_accuracy_sd'], '.4f')} |"
        )
    lines += [
        "",
        "| # | system | seed | dtype | train s | cold s | TTA test accuracy |",
        "|---:|---|---:|---|---:|---:|---:|",
    ]
    for i, row in enumerate(results["runs"], start=1):
        # Results written before rows recorded their seed have none.
        lines.append(
            f"| {i} | {row['system']} | {_cell(row.get('seed'), 'd')} | {row['dtype']} "
            f"| {row['train_seconds']:.3f} | {_cell(row['cold_seconds'], '.2f')} "
            f"| {row['tta_test_accuracy']:.4f} |"
        )
    if "model" in results:
        model = results["model"]
        lines += ["", f"{model['file']}: the model of run {model['run']} (seed {model['seed']})."]
    planned, done = results.get("runs_planned"), len(results["runs"])
    if planned is not None and done < planned:  # read as a finished set of fewer runs
        lines += ["", f"Interrupted: {done} of the {planned} runs asked for finished."]
    skipped = [f"- {entry['system']}: {entry['reason']}" for entry in results.get("skipped", ())]
    if skipped:
        lines += ["", "Not measured:", "", *skipped]
    return "\n".join(lines) + "\n"


def write_results(results: dict[str, Any], json_path: str | os.PathLike[str]) -> list[Path]:
    """Write `results` to `json_path` and its markdown table beside it (.md); return both paths."""
    return write_json_and_markdown(json_path, results, render_markdown(results))
