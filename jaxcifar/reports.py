"""A run's reports in its output folder: metrics.json and the three figures.

metrics.json holds `config`, `device`, `epochs` (one record per epoch, `train.EpochRecord`),
the final `test_accuracy`, `class_names` (in label order), `per_class_accuracy` (class name
-> fraction), `confusion_matrix` (rows true class, columns predicted, in label order) and,
from a training run, `compile_seconds`, `epoch_mode` (the mode that ran, never "auto") and
`data` (`source`, `train_examples`, `test_examples`: what the run read, after --limit-train /
--limit-test). Accuracies are fractions.
Figures: accuracy.png and loss.png (train and test per epoch; only for a run with epoch
records, a speedrun model has none), confusion_matrix.png; `jaxcifar scratch` draws its own,
`SCRATCH_FIGURES`.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jaxcifar import metrics
from jaxcifar.atomic import atomic_write_text
from jaxcifar.data.dataset import CLASS_NAMES

METRICS_FILE = "metrics.json"
FIGURES = ("accuracy.png", "loss.png", "confusion_matrix.png")
# The figures `jaxcifar scratch` draws beside its own metrics.json.
SCRATCH_FIGURES = ("error.png", "accuracy.png")


def remove_other_figures(out_dir: str | Path, drawn: Sequence[str]) -> None:
    """Remove the figures of `FIGURES` and `SCRATCH_FIGURES` in `out_dir` that are not in
    `drawn`, where out_dir/metrics.json is a report of ours: left by an earlier command of
    another kind (an evaluation's confusion matrix beside a scratch run's metrics.json), they
    would pass for this report's. A folder without one keeps its files: they are the user's."""
    out = Path(out_dir)
    if _read_report(out / METRICS_FILE) is not None:
        for name in {*FIGURES, *SCRATCH_FIGURES} - set(drawn):
            (out / name).unlink(missing_ok=True)


def remove_evaluation_of(model: Path) -> None:
    """Remove the report beside the file `model` (metrics.json and its figures) where it is an
    evaluation of that very file (`evaluate --checkpoint DIR --out DIR`): once `jaxcifar
    speedrun` replaces the model, it would pass for the new one's. Any other report stays."""
    out = model.parent
    report = _read_report(out / METRICS_FILE)
    evaluated = (report or {}).get("evaluated")
    checkpoint = evaluated.get("checkpoint") if isinstance(evaluated, dict) else None
    if not (isinstance(checkpoint, str) and model.exists() and os.path.exists(checkpoint)
            and os.path.samefile(checkpoint, model)):  # fmt: skip
        return
    remove_other_figures(out, drawn=())
    (out / METRICS_FILE).unlink()


def _data_name(report: Mapping[str, Any]) -> str:
    """The data a training run's figures name: its --dataset, or for the user's own classes
    the folder or archive they came from (a run on one's own photos was titled "cifar10")."""
    dataset, source = report["config"]["dataset"], report.get("data", {}).get("source")
    if source is None or tuple(report["class_names"]) == CLASS_NAMES[dataset]:
        return dataset
    name = Path(os.path.abspath(source)).name or source  # "--data-dir ." has no name; "/" none
    return f"{name} (read as {dataset})"


def _read_report(path: Path) -> dict[str, Any] | None:
    """The metrics.json of ours at `path` (a run's, an evaluation's or scratch's), else None."""
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError):  # missing, unreadable, not JSON or not text
        return None
    is_ours = isinstance(document, dict) and {"config", "epochs", "test_accuracy"} <= set(document)
    return document if is_ours else None


def build_metrics(
    *,
    config: Mapping[str, Any],
    device: Mapping[str, Any],
    history: Sequence[Mapping[str, float]],
    labels: np.ndarray,
    predictions: np.ndarray,
    class_names: Sequence[str],
    compile_seconds: float | None = None,
    epoch_mode: str | None = None,
    data: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The metrics.json document for a run whose final test predictions are `predictions`;
    the last three keys are left out when None (an evaluation measures none of them)."""
    matrix = metrics.confusion_matrix(labels, predictions, len(class_names))
    per_class = metrics.per_class_accuracy(matrix)
    report = {
        "config": dict(config),
        "device": dict(device),
        "epochs": [dict(record) for record in history],
        "test_accuracy": metrics.accuracy(matrix),
        # In label order: the confusion matrix's rows and columns, which a JSON object's keys
        # do not say (a tree's class folders "0".."11" sort as text: "10" is label 2).
        "class_names": list(class_names),
        # JSON has no NaN: a class absent from the test set gets null.
        "per_class_accuracy": {
            name: None if math.isnan(value) else float(value)
            for name, value in zip(class_names, per_class, strict=True)
        },
        "confusion_matrix": matrix.tolist(),
    }
    run = {"compile_seconds": compile_seconds, "epoch_mode": epoch_mode, "data": data}
    report.update({key: value for key, value in run.items() if value is not None})
    return report


def write_reports(out_dir: str | Path, report: Mapping[str, Any]) -> None:
    """Draw `report`'s figures (`build_metrics`' document) and write it as
    out_dir/metrics.json, all atomically: the confusion matrix, and the accuracy and loss
    curves when `report["epochs"]` holds records.
    Other figures an earlier command left in `out_dir` (curves, without records; a scratch
    run's) are removed, so that every figure there belongs to this metrics.json. metrics.json
    is written last, so that one listing a run's epochs means its figures are written too
    (`train --resume` reads it so)."""
    from jaxcifar.plots import plot_confusion_matrix, plot_curves

    out = Path(out_dir)
    history = report["epochs"]
    if history:
        epochs = [record["epoch"] for record in history]
        for quantity, path in (("accuracy", FIGURES[0]), ("loss", FIGURES[1])):
            plot_curves(
                out / path,
                epochs,
                {split: [r[f"{split}_{quantity}"] for r in history] for split in ("train", "test")},
                ylabel=quantity,
                title=f"{report['config']['model']} on {_data_name(report)}: {quantity}",
            )
    remove_other_figures(out, FIGURES if history else FIGURES[2:])
    plot_confusion_matrix(
        out / FIGURES[2], np.asarray(report["confusion_matrix"]), report["class_names"],
        title=f"Confusion matrix (test accuracy {report['test_accuracy']:.1%})",
    )  # fmt: skip
    atomic_write_text(out / METRICS_FILE, json.dumps(report, indent=2) + "\n")
