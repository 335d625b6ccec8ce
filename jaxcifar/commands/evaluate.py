"""Evaluate a checkpoint on its dataset's test split: accuracy, per-class accuracy, confusion
matrix.

Prints the summary; with --out, writes metrics.json and the figures there (the training
curves come from the checkpoint's history). metrics.json's `config` is the run that made the
model; its `evaluated` record is this evaluation: the file, the test data, the test subset's
limit and seed, and how many examples it held. A speedrun model (`jaxcifar speedrun`'s
model.msgpack) is evaluated with its test-time augmentation, as its run measured it.
A test subset is drawn with the seed the model's run drew its own with, so the same
--limit-test tests the same examples and reproduces the run's number.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from jaxcifar import folder_lock, interrupt
from jaxcifar.commands.arguments import (
    add_checkpoint_argument, add_data_dir_argument, check_data_fits_model,
    check_not_a_training_run, check_writable_folder, data_dir_or_recorded, output_folder,
    positive_int,
)
from jaxcifar.data import Dataset, load_split
from jaxcifar.errors import CheckpointError

if TYPE_CHECKING:  # imported when used: the modules load JAX
    from jaxcifar.checkpoint import Checkpoint
    from jaxcifar.speedrun.model_file import SavedModel, Subsets

HELP = "evaluate a checkpoint on the test split and write its reports"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_checkpoint_argument(parser)
    add_data_dir_argument(parser, recorded="the data the checkpoint or speedrun model records "
                          "it was trained on (where that still is)")  # fmt: skip
    parser.add_argument("--limit-test", type=positive_int, metavar="N", default=None,
                        help="evaluate on a random N-example subset, drawn as the model's run "
                        "drew its own; when not given, the run's own setting (a speedrun model "
                        "saved before models recorded it: the whole test split)")
    parser.add_argument("--out", type=output_folder, metavar="DIR",
                        help="write metrics.json and figures here")


class EvalSubset(NamedTuple):
    """The test examples an evaluation takes: `load_split`'s limit and seed."""

    limit: int | None  # None: the whole test split
    seed: int


class SavedModelTest(NamedTuple):
    """A saved model's test predictions and what its report needs besides them."""

    path: Path  # the file evaluated
    config: dict[str, Any]  # what metrics.json records as the run's configuration
    subset: EvalSubset  # what `test_set` was drawn as
    test_set: Dataset
    predictions: np.ndarray  # (N,) int
    history: list[dict[str, float]]  # the training epochs' records, if saved
    loss: float | None  # mean test cross-entropy; None for a speedrun model (TTA predictions)


def load_test_set(
    dataset: str, args: argparse.Namespace, subset: EvalSubset, saved: Checkpoint | SavedModel,
    what: str,
) -> Dataset:  # fmt: skip
    """The `subset` of `dataset`'s test split in --data-dir; without one, in the data the
    model trained on where `saved` (`what` it is: "the checkpoint") recorded it (its
    `train_data`, `data_dir_or_recorded`). DataError unless its images and classes are those
    `saved` was trained on."""
    data = data_dir_or_recorded(args.data_dir, saved.train_data, what)
    if data.recorded:  # so that a user sees which data was scored
        print(f"jaxcifar evaluate: note: no --data-dir given: testing on {data.data_dir}, the "
              f"data {what} recorded it was trained on", file=sys.stderr)  # fmt: skip
    test_set = load_split(dataset, "test", data_dir=data.data_dir, limit=subset.limit,
                          seed=subset.seed)  # fmt: skip
    check_data_fits_model(test_set, "test", data.origin, saved.path, saved.input_shape,
                          saved.class_names)  # fmt: skip
    return test_set


def evaluate_checkpoint(args: argparse.Namespace) -> SavedModelTest:
    """--checkpoint's training checkpoint on the test subset its run drew (or --limit-test)."""
    from jaxcifar import checkpoint, train

    saved = checkpoint.load(args.checkpoint)
    config = saved.config
    # Training drew its test subset from the run's seed too.
    subset = EvalSubset(args.limit_test or config.limit_test, config.seed)
    test_set = load_test_set(config.dataset, args, subset, saved, "the checkpoint")
    model, params = train.restore_model(saved)
    step = train.make_eval_step(model, dtype=config.dtype)
    result = train.evaluate(step, params, test_set)
    if not np.isfinite(result.loss):  # its NaN logits would score as class 0 everywhere
        raise CheckpointError(
            f"{saved.path}: its weights give a non-finite test loss ({result.loss}); "
            "a diverged or edited checkpoint"
        )
    return SavedModelTest(
        saved.path, config.to_dict(), subset, test_set, result.predictions, saved.history,
        result.loss,
    )  # fmt: skip


def speedrun_test_subset(subsets: Subsets | None, limit_test: int | None) -> EvalSubset:
    """The test subset for a speedrun model whose file records `subsets` (None in files
    saved before they were recorded): `limit_test` (else the run's own limit) drawn with the
    run's subset seed, so the run's limit gives the run's test images. Without a record:
    `limit_test` drawn with `speedrun`'s default seed, 0."""
    if subsets is None:
        return EvalSubset(limit_test, 0)
    return EvalSubset(limit_test or subsets.limit_test, subsets.seed)


def evaluate_speedrun_model(path: Path, args: argparse.Namespace) -> SavedModelTest:
    """The speedrun model at `path`, with its TTA, on the test subset its run drew (or
    --limit-test)."""
    from jaxcifar.speedrun import model_file

    saved = model_file.load(path)
    recorded = None if saved.subsets is None else saved.subsets._asdict()
    config = {
        "model": "speedrun", "dataset": saved.dataset, **dataclasses.asdict(saved.recipe),
        "seed": saved.seed, "subsets": recorded,
    }  # fmt: skip
    subset = speedrun_test_subset(saved.subsets, args.limit_test)
    test_set = load_test_set(saved.dataset, args, subset, saved, "the speedrun model")
    predictions = model_file.predictions(saved, test_set.images)
    return SavedModelTest(saved.path, config, subset, test_set, predictions, [], None)


def evaluated_record(result: SavedModelTest) -> dict[str, Any]:
    """metrics.json's `evaluated`: what this evaluation tested (`config` is the run's, whose
    own test subset may have been another)."""
    return {
        # Absolute: `reports.remove_evaluation_of` reads it from whatever folder it runs in.
        "checkpoint": os.path.abspath(result.path),
        "test_data": result.test_set.source,
        "limit_test": result.subset.limit,
        "subset_seed": result.subset.seed,
        "test_examples": len(result.test_set),
        "test_loss": result.loss,  # mean cross-entropy on them; None for a speedrun's TTA
    }


def run(args: argparse.Namespace) -> int:
    if not args.out:
        return _evaluate(args)
    check_writable_folder(args.out)  # before the evaluation, not after
    check_not_a_training_run(args.out)
    with folder_lock.holding(args.out):
        return _evaluate(args)


def _evaluate(args: argparse.Namespace) -> int:
    """Evaluate --checkpoint, print its test accuracy (overall and per class), and write its
    reports (metrics.json and the confusion matrix) into --out if given."""
    # These import JAX: after the flags' own checks.
    from jaxcifar import train
    from jaxcifar.reports import build_metrics, write_reports
    from jaxcifar.speedrun import model_file

    speedrun_model = model_file.find(args.checkpoint)
    if speedrun_model is None:
        result = evaluate_checkpoint(args)
    else:
        result = evaluate_speedrun_model(speedrun_model, args)
    test_set = result.test_set
    report = build_metrics(
        config=result.config, device=train.describe_devices(), history=result.history,
        labels=test_set.labels, predictions=result.predictions, class_names=test_set.class_names,
    )  # fmt: skip
    report["evaluated"] = evaluated_record(result)
    if args.out:  # first: a reader that closes stdout early (`| head -1`) stops the command
        with interrupt.uncut():
            write_reports(args.out, report)
    measured = "TTA accuracy" if result.loss is None else f"test loss {result.loss:.4f}, accuracy"
    print(f"{result.path}: {measured} {report['test_accuracy']:.4f} on {len(test_set)} examples")
    for name, value in report["per_class_accuracy"].items():
        print(f"  {name:>12}: {'-' if value is None else f'{value:.4f}'}")
    if args.out:
        print(f"reports in {args.out}")
    return 0
