"""Train the from-scratch NumPy network (sigmoid units, squared error, hand-written
backpropagation, plain SGD) on MNIST-style data; print each epoch, write DIR/metrics.json
and plots of the summed squared error and the accuracies per epoch (DIR/error.png,
DIR/accuracy.png). On a machine busy with other work, set OPENBLAS_NUM_THREADS=1: the
batch-sized matrix products lose far more to BLAS thread hand-offs than they gain."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from jaxcifar import folder_lock, interrupt
from jaxcifar.commands.arguments import (
    add_data_arguments, check_not_a_training_run, check_writable_folder, output_folder,
    positive_float, positive_int, seed_int,
)
from jaxcifar.config import (
    MLP_LAYER_SIZES, SCRATCH_BATCH_SIZE, SCRATCH_DTYPES, SCRATCH_EPOCHS, SCRATCH_LR,
    SCRATCH_LR_DECAYS,
)
from jaxcifar.errors import ConfigError

HELP = "train the from-scratch NumPy backprop network (sigmoid MLP, squared error, SGD)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_data_arguments(parser, default_dataset="fashion_mnist")
    parser.add_argument(
        "--epochs", type=positive_int, default=SCRATCH_EPOCHS, help="passes over the training set"
    )
    parser.add_argument("--batch-size", type=positive_int, default=SCRATCH_BATCH_SIZE,
                        help="examples per SGD step; an epoch's last step takes the rest (one "
                        "larger than the training set: every step takes all of it)")  # fmt: skip
    parser.add_argument("--lr", type=positive_float, default=SCRATCH_LR, help="SGD learning rate")
    parser.add_argument(
        "--lr-decay", choices=SCRATCH_LR_DECAYS, default="linear",
        help="linear: lower the rate per epoch from --lr towards 0, so the final epoch does not "
        "land on a random point of the constant-rate wobble; constant: the exercise's fixed rate",
    )  # fmt: skip
    parser.add_argument(
        "--hidden", type=positive_int, nargs="+", default=list(MLP_LAYER_SIZES[1:-1]),
        metavar="WIDTH", help="width of each hidden layer, input side first",
    )  # fmt: skip
    parser.add_argument("--seed", type=seed_int, default=0,
                        help="seeds the weights, the subsets and the shuffles")  # fmt: skip
    parser.add_argument(
        "--dtype", choices=SCRATCH_DTYPES, default="float32",
        help="float type of the arithmetic; float32 runs about twice as fast as float64",
    )  # fmt: skip
    parser.add_argument("--out", type=output_folder, default=Path("runs/scratch"), metavar="DIR",
        help="folder for metrics.json and plots",
    )
    parser.add_argument(
        "--limit-train", type=positive_int, metavar="N", help="train on a random N examples"
    )
    parser.add_argument(
        "--limit-test", type=positive_int, metavar="N", help="test on a random N examples"
    )


def load_inputs(
    dataset: str,
    data_dir: str | None,
    *,
    limit_train: int | None = None,
    limit_test: int | None = None,
    seed: int = 0,
    dtype: str = "float32",
) -> dict[str, Any]:
    """Both splits as network inputs: `x_train` (N, H*W*C) in [0, 1] of `dtype`, `y_train` (N,)
    int32, `x_test`, `y_test` likewise, plus `class_names` and `source`."""
    from jaxcifar import scratch
    from jaxcifar.data import load_split

    splits = {}
    for split, limit in (("train", limit_train), ("test", limit_test)):
        data = load_split(dataset, split, data_dir=data_dir, limit=limit, seed=seed)
        splits[f"x_{split}"] = scratch.scale_pixels(data.images, dtype)
        splits[f"y_{split}"] = data.labels
    return {**splits, "class_names": data.class_names, "source": data.source}


def run(args: argparse.Namespace) -> int:
    from jaxcifar import scratch

    if problem := scratch.rate_problem(args.lr, args.dtype):
        raise ConfigError(f"--lr {args.lr} {problem} (--dtype {args.dtype})")
    check_writable_folder(args.out)  # before the data and the training, not after
    check_not_a_training_run(args.out)
    with folder_lock.holding(args.out):
        return _train_and_report(args)


def _train_and_report(args: argparse.Namespace) -> int:
    """Load the data, train, and write --out's metrics.json and figure."""
    from jaxcifar import plots, scratch
    from jaxcifar.atomic import atomic_write_text
    from jaxcifar.reports import METRICS_FILE, SCRATCH_FIGURES, remove_other_figures

    data = load_inputs(
        args.dataset, args.data_dir, limit_train=args.limit_train, limit_test=args.limit_test,
        seed=args.seed, dtype=args.dtype,
    )  # fmt: skip
    layer_sizes = [data["x_train"].shape[1], *args.hidden, len(data["class_names"])]
    config = {
        "dataset": args.dataset,
        "source": data["source"],
        "train_examples": len(data["y_train"]),
        "test_examples": len(data["y_test"]),
        "layer_sizes": layer_sizes,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "lr_decay": args.lr_decay,
        "seed": args.seed,
        "dtype": args.dtype,
    }
    print(
        f"data: {config['train_examples']} train / {config['test_examples']} test examples "
        f"from {data['source']}; network {'-'.join(map(str, layer_sizes))}, lr {args.lr}, "
        f"batch {args.batch_size}",
        flush=True,
    )

    def report(record: dict[str, Any]) -> None:
        print(
            f"epoch {record['epoch']:>3}/{args.epochs}  "
            f"sum squared error {record['sum_squared_error']:.1f}  "
            f"train acc {record['train_accuracy']:.4f}  test acc {record['test_accuracy']:.4f}  "
            f"{record['seconds']:.1f}s",
            flush=True,
        )

    start = time.perf_counter()
    network = scratch.initialize_network(layer_sizes, seed=args.seed, dtype=args.dtype)
    _, history = scratch.train(
        network, data["x_train"], data["y_train"], l_rate=args.lr, n_epoch=args.epochs,
        batch_size=args.batch_size, x_test=data["x_test"], y_test=data["y_test"],
        seed=args.seed, on_epoch=report, decay=args.lr_decay == "linear",
    )  # fmt: skip
    metrics = {
        "config": config,
        "epochs": history,
        "test_accuracy": history[-1]["test_accuracy"],
        "seconds": time.perf_counter() - start,
    }
    epochs = [record["epoch"] for record in history]
    with interrupt.uncut():
        remove_other_figures(args.out, SCRATCH_FIGURES)
        atomic_write_text(args.out / METRICS_FILE, json.dumps(metrics, indent=2) + "\n")
        plots.plot_curves(
            args.out / SCRATCH_FIGURES[0], epochs,
            {"train": [record["sum_squared_error"] for record in history]},
            ylabel="sum of squared errors", title="From-scratch network: training error",
        )  # fmt: skip
        plots.plot_curves(
            args.out / SCRATCH_FIGURES[1], epochs,
            {split: [record[f"{split}_accuracy"] for record in history]
             for split in ("train", "test")},
            ylabel="accuracy", title="From-scratch network: accuracy",
        )  # fmt: skip
    print(
        f"test accuracy {metrics['test_accuracy']:.4f}; "
        f"wrote {args.out}/metrics.json, error.png, accuracy.png"
    )
    return 0
