"""Ablation of the from-scratch NumPy network on Fashion-MNIST: 1, 2 or 3 hidden layers x epochs.

Trains each architecture at its own learning rate (see HIDDEN_LAYERS) with the `jaxcifar
scratch` default batch size, in float32, on the full 60,000 training images, scores the 10,000
test images after every epoch, and writes under --out: scratch-ablation.json (every epoch of
every run), scratch-ablation.md (test accuracy at chosen epochs, as a table) and
scratch-ablation.png (test accuracy per epoch). The rate stays constant unless --lr-decay linear
(`jaxcifar scratch` decays it linearly by default): the committed results are constant-rate.

    python scripts/ablation_scratch.py [--data-dir ../shared/data] [--epochs 10]
        [--lr-decay {linear,constant}]
"""

from __future__ import annotations

import os

# One BLAS thread unless the caller chose: the matrix products here are batch-32 small, and on
# a 2-core machine shared with other work, threaded OpenBLAS spends more time handing off
# between threads than it saves (measured ~20x slower under load; ~15% faster when idle).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from jaxcifar import plots, scratch  # noqa: E402
from jaxcifar.atomic import atomic_write_text  # noqa: E402
from jaxcifar.commands import scratch as scratch_command  # noqa: E402
from jaxcifar.commands.arguments import DATA_DIR_ENV, positive_int, seed_int  # noqa: E402
from jaxcifar.config import SCRATCH_BATCH_SIZE, SCRATCH_LR, SCRATCH_LR_DECAYS  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# Hidden widths -> learning rate. With sigmoid outputs and squared error the stable rate
# shrinks as the last hidden layer widens (its width is the output layer's fan-in): at rate
# >= 1, 784-500-10 drives every output to 0 within an epoch and stays at chance. Each rate is
# the best of {0.5, 1, 2} after 3 epochs on 6,000 images (784-500-50-10 keeps the command's
# default, 3.0, which beat 1.5 on the full set).
HIDDEN_LAYERS = {(500,): 0.5, (500, 50): SCRATCH_LR, (500, 250, 50): 2.0}
REPORT_EPOCHS = (1, 2, 5, 10, 15, 20, 30)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data-dir", default=os.environ.get(DATA_DIR_ENV) or str(REPO.parent / "shared" / "data"),
        help=f"where Fashion-MNIST is (default ${DATA_DIR_ENV}, else ../shared/data)",
    )  # fmt: skip
    parser.add_argument("--epochs", type=positive_int, default=10)
    parser.add_argument(
        "--batch-size", type=positive_int, default=SCRATCH_BATCH_SIZE
    )
    parser.add_argument(
        "--limit-train", type=positive_int, help="train on a random N images (smoke runs)"
    )
    parser.add_argument("--seed", type=seed_int, default=0)
    parser.add_argument(
        "--lr-decay", choices=SCRATCH_LR_DECAYS, default="constant",
        help="the rate per epoch: constant (the committed results), or decaying linearly "
        "towards 0 as `jaxcifar scratch` does by default",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    return parser.parse_args()


def markdown_table(runs: list[dict], config: dict) -> str:
    """Test accuracy (%) at the epochs in REPORT_EPOCHS that were run, one row per architecture."""
    shown = [epoch for epoch in REPORT_EPOCHS if epoch <= config["epochs"]]
    if config["epochs"] not in shown:
        shown.append(config["epochs"])
    header = [
        "hidden layers",
        "network",
        "lr",
        *(f"epoch {epoch}" for epoch in shown),
        "best (epoch)",
        "s/epoch",
    ]
    lines = [
        "# From-scratch NumPy network on Fashion-MNIST: depth x epochs",
        "",
        f"Test accuracy (%) on the {config['test_examples']:,} test images after each epoch of SGD "
        f"on {config['train_examples']:,} training images: sigmoid units, squared error, "
        f"{config['lr_decay']} learning rate, batch {config['batch_size']}, {config['dtype']}, "
        f"seed {config['seed']}. "
        f"Produced by `scripts/ablation_scratch.py` on {config['machine']} with "
        f"OPENBLAS_NUM_THREADS={config['openblas_threads']}; seconds per epoch are wall time on a "
        "machine shared with other work, so they are upper bounds.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for run in runs:
        accuracies = [record["test_accuracy"] for record in run["epochs"]]
        best = max(range(len(accuracies)), key=accuracies.__getitem__)
        seconds = sum(record["seconds"] for record in run["epochs"]) / len(run["epochs"])
        cells = [
            str(len(run["hidden"])),
            "-".join(map(str, run["layer_sizes"])),
            f"{run['lr']:g}",
            *(f"{100 * accuracies[epoch - 1]:.2f}" for epoch in shown),
            f"{100 * accuracies[best]:.2f} ({best + 1})",
            f"{seconds:.1f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    args = parse_args()
    data = scratch_command.load_inputs(
        "fashion_mnist",
        args.data_dir,
        limit_train=args.limit_train,
        seed=args.seed,
        dtype="float32",
    )
    config = {
        "dataset": "fashion_mnist",
        "train_examples": len(data["y_train"]),
        "test_examples": len(data["y_test"]),
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr_decay": args.lr_decay,
        "dtype": "float32",
        "seed": args.seed,
        "openblas_threads": os.environ["OPENBLAS_NUM_THREADS"],
        "machine": f"{os.cpu_count()} CPU cores, {platform.machine()}",
    }
    runs = []
    for hidden, l_rate in HIDDEN_LAYERS.items():
        layer_sizes = [data["x_train"].shape[1], *hidden, len(data["class_names"])]
        print(f"network {'-'.join(map(str, layer_sizes))}, lr {l_rate}", flush=True)
        start = time.perf_counter()
        _, history = scratch.train(
            scratch.initialize_network(layer_sizes, seed=args.seed, dtype="float32"),
            data["x_train"], data["y_train"], l_rate=l_rate, n_epoch=args.epochs,
            batch_size=args.batch_size, x_test=data["x_test"], y_test=data["y_test"],
            seed=args.seed, decay=args.lr_decay == "linear",
            on_epoch=lambda record: print(
                f"  epoch {record['epoch']:>2}  test acc {record['test_accuracy']:.4f}  "
                f"{record['seconds']:.1f}s", flush=True,
            ),
        )  # fmt: skip
        runs.append(
            {"hidden": list(hidden), "lr": l_rate, "layer_sizes": layer_sizes, "epochs": history,
             "seconds": time.perf_counter() - start}
        )  # fmt: skip

    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(
        args.out / "scratch-ablation.json",
        json.dumps({"config": config, "runs": runs}, indent=2) + "\n",
    )
    table = markdown_table(runs, config)
    atomic_write_text(args.out / "scratch-ablation.md", table)
    plots.plot_curves(
        args.out / "scratch-ablation.png",
        list(range(1, args.epochs + 1)),
        {
            "-".join(map(str, run["layer_sizes"])): [r["test_accuracy"] for r in run["epochs"]]
            for run in runs
        },
        ylabel="test accuracy",
        title="From-scratch NumPy network on Fashion-MNIST",
    )
    print(table)


if __name__ == "__main__":
    main()
