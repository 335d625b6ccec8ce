"""A run's results as files: JSON (everything), a markdown table and a log-log plot.

Each is written atomically (`jaxcifar.atomic`), so a reader never sees half a file.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jaxcifar.atomic import write_json_and_markdown
from jaxcifar.bench.rows import ROOF_CASE, STEP_CASES, Row

SUFFIXES = (".json", ".md", ".png")  # the files a run writes, `<stem><suffix>` each


def free_stem(out_dir: str | os.PathLike[str], base: str) -> str:
    """`base`, or else the first of `base`-2, `base`-3, ... of which `out_dir` holds no
    result file: a stem no earlier run's results use."""
    out, stem, number = Path(out_dir), base, 1
    while any((out / f"{stem}{suffix}").exists() for suffix in SUFFIXES):
        number += 1
        stem = f"{base}-{number}"
    return stem


def case_line(label: str, row: Row | None, seconds: float) -> str:
    """The progress line of the case `label` that took `seconds`: its median step and its
    rate, images/s (GFLOP/s for the matmul roof, which has no images); `row` None: skipped."""
    if row is None:
        return f"{label}: skipped (see the results file)"
    if row.case == ROOF_CASE:
        rate = f"{row.flops_per_second * 1e-9:.0f} GFLOP/s"
    else:
        rate = f"{row.images_per_second:.0f} images/s"
    return f"{label}: median {row.median * 1e3:.3f} ms, {rate} [{seconds:.1f} s]"


def write_results(
    results: dict[str, Any], out_dir: str | os.PathLike[str], stem: str, *, plot: bool = True
) -> list[Path]:
    """Write `<stem>.json`, `<stem>.md` and, with `plot`, `<stem>.png` into `out_dir`;
    return their paths. Without `plot` (the rows so far of a run in progress), first remove
    the `<stem>.png` an earlier run of that name drew: it plots other rows than these."""
    out = Path(out_dir)
    if not plot:
        (out / f"{stem}.png").unlink(missing_ok=True)
    paths = write_json_and_markdown(out / f"{stem}.json", results, render_markdown(results))
    if plot:
        paths.append(out / f"{stem}.png")
        plot_step_times(paths[2], results["rows"], title=results["environment"]["device_kind"])
    return paths


def _number(value: float | None, scale: float = 1.0, digits: int = 3) -> str:
    return "-" if value is None else f"{value * scale:.{digits}g}"


def _ratio(row: dict[str, Any]) -> str:
    """The row's comparison, named ('JAX 2.1x faster' reads the same way for every kind), then
    its roof where it has one: a JAX row's too, the only one shown where no reference ran."""
    parts = []
    if row["jax_speedup"] is not None:
        parts.append(f"jax x{row['jax_speedup']:.2f}")
    elif row["speedup_vs_float32"] is not None:
        parts.append(f"vs f32 x{row['speedup_vs_float32']:.2f}")
    elif row["speedup_vs_loop"] is not None:
        parts.append(f"vs loop x{row['speedup_vs_loop']:.2f}")
    if row["speedup_bound"] is not None:
        parts.append(f"roof x{row['speedup_bound']:.1f}")
    return ", ".join(parts)


def _roof_lines(rows: Sequence[dict[str, Any]]) -> list[str]:
    """One line naming the matmul roof measured by each framework, then a blank line."""
    roofs = [
        f"{row['framework']} {row['flops_per_second'] * 1e-9:.0f} GFLOP/s "
        f"({row['batch_size']}x{row['batch_size']})"
        for row in rows
        if row["case"] == ROOF_CASE
    ]
    return [f"Matmul roof (float32 GEMM): {', '.join(roofs)}.", ""] if roofs else []


def render_markdown(results: dict[str, Any]) -> str:
    """The results as markdown: the environment (and how many of the planned cases ran, when
    not all), a table of step rows, one of epoch rows, and what was skipped."""
    env, cases = results["environment"], results["cases"]
    seconds = f"{results['total_seconds']:.0f} s"
    versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v)
    lines = [
        f"# Step-time benchmark, {env['device_kind']} ({env['platform']}), {env['date']}",
        "",
        f"- {env['cpu_count']} CPUs ({env.get('usable_cpus')} usable; "
        f"{' '.join(env.get('cpu_flags') or []) or 'no listed vector extensions'}); "
        f"load average at start {env['load_average']}; "
        f"XLA_FLAGS `{env['xla_flags'] or '(none)'}`; "
        f"GLIBC_TUNABLES `{env.get('glibc_tunables') or '(none)'}`; thread variables "
        f"{ {k: v for k, v in env['thread_variables'].items() if v} or '(none set)'}",
        f"- {versions}",
        f"- whole run: {seconds}" if cases["done"] == cases["planned"] else
        f"- {cases['done']} of {cases['planned']} cases (interrupted), in {seconds}",
        "",
        "Ratios: `jax xR` on a reference row = its median step / jitted JAX float32's on the "
        "same model and batch (R > 1: JAX faster); `vs f32 xR` = float32 median / bfloat16 "
        "median; `vs loop xR` = loop epoch / scan epoch; `roof xB` = the most any "
        "implementation could gain on that step: the matmul roof's FLOP/s / the step's. "
        "MiB: the device memory one call of the compiled JAX program takes (arguments, "
        "outputs, temporaries).",
        "",
        *_roof_lines(results["rows"]),
        "| framework | model | case | batch | dtype | compile s | median ms | p10 ms | p90 ms "
        "| steps | images/s | GFLOP/step | GFLOP/s | MiB | ratio |",
        "|---|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in results["rows"]:
        if row["case"] not in STEP_CASES:
            continue
        steps = row["step_seconds"]
        lines.append(
            f"| {row['framework']} | {row['model']} | {row['case']} | {row['batch_size']} "
            f"| {row['dtype']} | {_number(row['compile_seconds'])} "
            f"| {_number(steps['median'], 1e3)} | {_number(steps['p10'], 1e3)} "
            f"| {_number(steps['p90'], 1e3)} | {row['steps_timed']} "
            f"| {row['images_per_second']:.0f} | {_number(row['flops_per_step'], 1e-9)} "
            f"| {_number(row['flops_per_second'], 1e-9)} "
            f"| {_number(row['peak_memory_bytes'], 2**-20)} | {_ratio(row)} |"
        )
    epochs = [row for row in results["rows"] if row["case"].startswith("epoch_")]
    if epochs:
        lines += [
            "",
            "| model | epoch mode | batch | steps | compile s | epoch s | mean step ms "
            "| images/s | ratio |",
            "|---|---|---:|---:|---:|---:|---:|---:|---|",
        ]
        for row in epochs:
            lines.append(
                f"| {row['model']} | {row['case'].removeprefix('epoch_')} | {row['batch_size']} "
                f"| {row['steps_per_epoch']} | {_number(row['compile_seconds'])} "
                f"| {_number(row['epoch_seconds'])} "
                f"| {_number(row['step_seconds']['median'], 1e3)} "
                f"| {row['images_per_second']:.0f} | {_ratio(row)} |"
            )
    if results["skipped"]:
        lines += ["", "Skipped:", ""]
        for entry in results["skipped"]:
            lines.append(f"- {entry.get('case', entry['framework'])}: {entry['reason']}")
    return "\n".join(lines) + "\n"


def plot_step_times(
    path: str | os.PathLike[str], rows: Sequence[dict[str, Any]], *, title: str
) -> None:
    """Log-log median step time (p10-p90 as error bars) against batch size: one panel per
    model, one line per framework, case and dtype. Saved as PNG."""
    from matplotlib.figure import Figure

    from jaxcifar.plots import save_figure

    steps = [row for row in rows if row["case"] in STEP_CASES]
    models = sorted({row["model"] for row in steps}) or ["(none)"]
    fig = Figure(figsize=(5.5 * len(models), 4.2))
    axes = fig.subplots(1, len(models), squeeze=False)
    for ax, model in zip(axes[0], models):
        series: dict[str, list[dict[str, Any]]] = {}
        for row in steps:
            if row["model"] == model:
                label = f"{row['framework']} {row['case']} {row['dtype']}"
                series.setdefault(label, []).append(row)
        for label, points in sorted(series.items()):
            points.sort(key=lambda row: row["batch_size"])
            x = [row["batch_size"] for row in points]
            median = [row["step_seconds"]["median"] * 1e3 for row in points]
            low = [m - row["step_seconds"]["p10"] * 1e3 for m, row in zip(median, points)]
            high = [row["step_seconds"]["p90"] * 1e3 - m for m, row in zip(median, points)]
            ax.errorbar(x, median, yerr=[low, high], marker="o", capsize=3, label=label)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("batch size")
        ax.set_ylabel("step time (ms, median; bars p10-p90)")
        ax.set_title(f"{model} - {title}")
        ax.grid(alpha=0.3, which="both")
        if series:
            ax.legend(fontsize=7)
    save_figure(fig, path, dpi=110)
