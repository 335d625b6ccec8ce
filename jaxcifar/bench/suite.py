"""A whole benchmark run: which cases to measure, in what order, and what was skipped."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

from jaxcifar.bench import jax_cases, numpy_reference, peak, torch_reference
from jaxcifar.bench.environment import describe_environment
from jaxcifar.bench.rows import Row, add_ratios
from jaxcifar.bench.settings import TIMED_EPOCH_MODES, Settings


@dataclasses.dataclass(frozen=True)
class Case:
    """One measurement to make: `measure()` returns its Row."""

    label: str
    measure: Callable[[], Row]
    # Exceptions of these types become a "skipped" entry instead of ending the run.
    tolerated: tuple[type[BaseException], ...] = ()


def plan(settings: Settings) -> tuple[list[Case], list[dict[str, str]]]:
    """The cases `settings` asks for, in run order, and the references skipped (and why)."""
    cases, skipped = [], []
    budget = settings.budget
    torch_reason = torch_reference.torch_missing() if settings.reference else None
    if settings.reference:
        # The roof first, before the steps have warmed (or heated) the machine.
        for framework, measure in (("jax", peak.measure_jax_matmul),
                                   ("numpy", peak.measure_numpy_matmul)):  # fmt: skip
            cases.append(Case(f"{framework} matmul_peak", lambda m=measure: m(budget)))
    for model in settings.models:
        for batch_size in settings.batch_sizes:
            for dtype in settings.dtypes:
                cases.append(Case(
                    f"jax {model} train_step b{batch_size} {dtype}",
                    lambda m=model, b=batch_size, d=dtype: jax_cases.measure_train_step(
                        m, b, d, budget),
                ))  # fmt: skip
            if not settings.reference:
                continue
            data = jax_cases.synthetic_dataset(model, batch_size)
            if model == "mlp":
                for framework, measure in (
                    ("jax", jax_cases.measure_scratch_twin),
                    ("numpy", numpy_reference.measure_scratch_step),
                ):
                    cases.append(Case(
                        f"{framework} mlp scratch_step b{batch_size}",
                        lambda d=data, m=measure: m(d.images, d.labels, budget),
                    ))  # fmt: skip
            elif torch_reason is None:
                for compiled in (False, True)[: 1 + settings.torch_compile]:
                    framework = "torch-compile" if compiled else "torch"
                    cases.append(Case(
                        f"{framework} cnn train_step b{batch_size}",
                        lambda d=data, c=compiled: torch_reference.measure_torch_cnn(
                            d.images, d.labels, budget, compile=c, threads=settings.torch_threads),
                        tolerated=(Exception,) if compiled else (),
                    ))  # fmt: skip
    if settings.reference and "cnn" in settings.models:
        if torch_reason is not None:
            skipped.append({"framework": "torch", "reason": torch_reason})
        elif not settings.torch_compile:
            reason = "not requested (--torch-compile)"
            skipped.append({"framework": "torch-compile", "reason": reason})
    if settings.epoch_images:
        for model in settings.models:
            for batch_size in settings.epoch_batch_sizes:
                for mode in TIMED_EPOCH_MODES:
                    cases.append(Case(
                        f"jax {model} epoch_{mode} b{batch_size}",
                        lambda m=model, b=batch_size, md=mode: jax_cases.measure_epoch(
                            m, b, md, settings.epoch_images),
                    ))  # fmt: skip
    return cases, skipped


def run(
    settings: Settings,
    *,
    planned: tuple[list[Case], list[dict[str, str]]] | None = None,
    on_case: Callable[[Case, Row | None, float, dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Measure every planned case and return the results document (which
    `output.write_results` writes).

    `planned`: `plan(settings)` where the caller made it already (to count the cases), so
    the datasets and the torch probe are not made twice. `on_case(case, row or None if
    skipped, seconds, results so far)` is called after each case: for progress, and to save
    the partial results before a time limit can strike. The document's `cases` {done,
    planned} counts the cases measured or skipped so far and those planned: fewer done than
    planned marks a run that stopped early.
    """
    environment = describe_environment()
    cases, skipped = plan(settings) if planned is None else planned
    rows: list[Row] = []
    started = time.perf_counter()

    def document(done: int) -> dict[str, Any]:
        add_ratios(rows)
        return {
            "environment": environment,
            "settings": settings.to_dict(),
            "cases": {"done": done, "planned": len(cases)},
            "total_seconds": time.perf_counter() - started,
            "skipped": skipped,
            "rows": [row.to_dict() for row in rows],
        }

    for done, case in enumerate(cases, 1):
        case_start = time.perf_counter()
        try:
            row = case.measure()
        except case.tolerated as error:
            reason = f"{type(error).__name__}: {error}"
            framework = case.label.split()[0]
            skipped.append({"framework": framework, "case": case.label, "reason": reason})
            row = None
        else:
            rows.append(row)
        if on_case is not None:
            on_case(case, row, time.perf_counter() - case_start, document(done))
    return document(len(cases))
