"""Evaluate a checkpoint on its dataset's test split: accuracy, per-class accuracy, confusion matrix.

Prints the summary; with --out, writes metrics.json and the figures there (the training
curves come from the checkpoint's history).
"""

from __future__ import annotations

import argparse

from jaxcifar.commands._args import add_data_dir_argument, positive_int
from jaxcifar.config import RunConfig
from jaxcifar.data.dataset import Dataset

HELP = "evaluate a checkpoint on the test split and write its reports"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, metavar="C",
                        help="a checkpoint file, or a training output folder holding checkpoint.msgpack")
    add_data_dir_argument(parser)
    parser.add_argument("--limit-test", type=positive_int, metavar="N", default=None,
                        help="evaluate on a random N-example subset (default: the checkpoint's setting)")
    parser.add_argument("--out", metavar="DIR", help="write metrics.json and figures here")  # fmt: skip


def load_split(config: RunConfig, split: str, data_dir: str | None, limit: int | None) -> Dataset:
    """`config.dataset`'s `split`, cut to a seeded random `limit` examples when given."""
    from jaxcifar.data import load

    dataset = load(config.dataset, split, data_dir=data_dir)
    return dataset if limit is None else dataset.subset(limit, seed=config.seed)


def run(args: argparse.Namespace) -> int:
    from jaxcifar import checkpoint, train
    from jaxcifar.reports import build_metrics, write_reports

    saved = checkpoint.load(args.checkpoint)
    config = saved.config
    test_set = load_split(config, "test", args.data_dir, args.limit_test or config.limit_test)
    template = train.state_template(config, saved.input_shape, len(saved.class_names))
    params = checkpoint.restore(saved, template).params
    model = train.build_model(config, saved.input_shape, len(saved.class_names))
    setup = train.Setup(model, None, 0)
    result = train.evaluate(train.make_eval_step(setup, dtype=config.dtype), params, test_set)
    report = build_metrics(
        config=config.to_dict(), device=train.describe_devices(), history=saved.history,
        labels=test_set.labels, predictions=result.predictions, class_names=test_set.class_names,
    )  # fmt: skip
    print(f"{saved.path}: test loss {result.loss:.4f}, accuracy {report['test_accuracy']:.4f} "
          f"on {len(test_set)} examples")  # fmt: skip
    for name, value in report["per_class_accuracy"].items():
        print(f"  {name:>12}: {'-' if value is None else f'{value:.4f}'}")
    if args.out:
        write_reports(args.out, report, test_set.class_names)
        print(f"reports in {args.out}")
    return 0
