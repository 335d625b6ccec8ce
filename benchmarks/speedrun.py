"""Time N runs of jaxcifar's fast recipe (airbench94 in JAX) and, when the `airbench` package
is importable, N runs of airbench94 itself on the same data (on a GPU as published, float16;
without one on the CPU in float32, through `airbench_cpu.py`).

Usage: python benchmarks/speedrun.py [--data-dir ../shared/data] [--runs 5]
       [--dtypes bfloat16 float16] [--limit-train N --limit-test N] [--epoch-mode auto]
       [--out benchmarks/results] [--name STEM]

Writes <out>/<STEM>.json, STEM speedrun-<device> unless --name gives one ({"device", "runs":
[{"system": "jaxcifar-fast" | "airbench94", "dtype", "train_seconds", "cold_seconds",
"tta_test_accuracy"}], "skipped", "jaxcifar": {dtype: compile seconds, epoch mode, step counts,
losses}, ...}) and the same name .md. Ours runs once per --dtypes entry; airbench94 computes in
float16. Both systems train --epochs epochs (default 9.9, airbench94's own) and are timed the
same way: training from scratch plus TTA test predictions, warm, after one untimed warm-up run
each, as airbench itself does. Cold: ours is compile + the warm-up run (compiled programs
persist in $JAXCIFAR_CACHE/xla, so a second invocation's cold time is smaller); airbench's is
its warm-up run (CUDA/cuDNN initialisation and autotuning). airbench reads cifar10/train.pt
and test.pt relative to the working directory, and its train94 builds a loader from them when
imported, so both are written from our loader into a temporary directory that is the working
directory while it runs.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

# JAX would otherwise reserve 75% of the GPU's memory, starving PyTorch in the same process.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

from airbench_cpu import airbench_missing  # noqa: E402
from bench_paths import RESULTS, SHARED_DATA, run_script  # noqa: E402
from jaxcifar.data import load_split  # noqa: E402
from jaxcifar.bench import environment  # noqa: E402
from jaxcifar.commands.arguments import file_stem, positive_float, positive_int  # noqa: E402
from jaxcifar.data.dataset import Dataset  # noqa: E402
from jaxcifar import xla_cache  # noqa: E402
from jaxcifar.speedrun import measure  # noqa: E402
from jaxcifar.speedrun.recipe import DTYPES, EPOCH_MODES, Recipe  # noqa: E402

AIRBENCH = "airbench94"


def write_airbench_data(root: Path, train_set: Dataset, test_set: Dataset) -> None:
    """root/cifar10/{train,test}.pt as airbench's loader reads them: {"images" (N, 32, 32, 3)
    uint8, "labels" (N,) int64, "classes" [str]}. The training images go in a seeded random
    order, as in CIFAR-10's own files: airbench sets its whitening layer from the first 5,000,
    and the image-folder loader returns them sorted by class (5,000 airplanes)."""
    import numpy as np
    import torch

    order = np.random.default_rng(0).permutation(len(train_set))
    splits = {
        "train": (train_set.images[order], train_set.labels[order]),
        "test": (test_set.images, test_set.labels),
    }
    (root / "cifar10").mkdir(parents=True, exist_ok=True)
    for name, (images, labels) in splits.items():
        torch.save(
            {
                "images": torch.from_numpy(np.ascontiguousarray(images)),
                "labels": torch.from_numpy(labels.astype("int64")),
                "classes": list(train_set.class_names),
            },
            root / "cifar10" / f"{name}.pt",
        )


def run_airbench(train_set: Dataset, test_set: Dataset, runs: int, widths: tuple[int, ...],
                 epochs: float, on_row: Callable[[dict], None]) -> None:  # fmt: skip
    """`runs` timed airbench94 runs (train94 for `epochs` + evaluate with TTA level 2) after one
    warm-up, on the GPU in float16 as airbench is written, or without one on the CPU in
    float32; `on_row` gets each run's row as soon as it ends."""
    import torch

    from airbench_cpu import airbench_on_cpu, import_airbench, net_widths, without_test_loader

    on_gpu = torch.cuda.is_available()
    utils, lib94 = import_airbench()
    make_net = functools.partial(lib94.make_net94, widths=net_widths(widths))
    with tempfile.TemporaryDirectory(prefix="jaxcifar-airbench-") as tmp:
        write_airbench_data(Path(tmp), train_set, test_set)
        with contextlib.chdir(tmp):
            device = 0 if on_gpu else "cpu"
            loader = utils.CifarLoader(
                "cifar10", train=True, batch_size=1024, aug={"flip": True, "translate": 2},
                altflip=True, gpu=device,
            )  # fmt: skip
            test_loader = utils.CifarLoader("cifar10", train=False, batch_size=2000, gpu=device)
            if not on_gpu:  # float16 convolutions on a CPU are missing or slow
                for cpu_loader in (loader, test_loader):
                    cpu_loader.images = cpu_loader.images.float()

            def timed_run() -> tuple[float, float]:
                torch.cuda.synchronize()
                start = time.perf_counter()
                model = lib94.train94(loader, epochs=epochs, make_net=make_net, verbose=False)
                accuracy = utils.evaluate(model, test_loader, tta_level=2)
                torch.cuda.synchronize()
                return time.perf_counter() - start, accuracy

            dtype = "float16" if on_gpu else "float32"
            with without_test_loader(utils) if on_gpu else airbench_on_cpu(utils):
                cold, _ = timed_run()
                for i in range(runs):
                    seconds, accuracy = timed_run()
                    cold_seconds = cold if i == 0 else None
                    on_row(measure.run_row(AIRBENCH, dtype, seconds, cold_seconds, accuracy))
                    print(f"{AIRBENCH} run {i + 1}/{runs}: {seconds:.2f} s, TTA {accuracy:.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=SHARED_DATA)
    parser.add_argument("--runs", type=positive_int, default=5)
    parser.add_argument("--limit-train", type=positive_int, help="train on a random N-image subset")
    parser.add_argument("--limit-test", type=positive_int, help="test on a random N-image subset")
    parser.add_argument("--epochs", type=positive_float, default=Recipe().epochs)
    parser.add_argument("--dtypes", nargs="+", choices=DTYPES, default=[Recipe().dtype])
    parser.add_argument("--widths", type=positive_int, nargs=3, default=list(Recipe().widths),
                        help="channels of the three conv blocks, both systems")  # fmt: skip
    parser.add_argument("--epoch-mode", choices=EPOCH_MODES, default="auto")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--name", type=file_stem, help="file stem (default: speedrun-<device>)")
    args = parser.parse_args()
    batch = Recipe().batch_size
    if args.limit_train is not None and args.limit_train < batch:  # before the data is read
        parser.error(f"argument --limit-train: both systems train on batches of {batch} "
                     f"images, airbench94's; give at least {batch}, got {args.limit_train}")

    splits = {
        split: load_split("cifar10", split, data_dir=args.data_dir, limit=limit)
        for split, limit in (("train", args.limit_train), ("test", args.limit_test))
    }
    widths = tuple(args.widths)
    device = environment.device_name()
    results = {
        "device": device,
        "runs": [],
        "skipped": [],
        "warmup": True,  # both systems: an untimed run first (measure.measure, run_airbench)
        "train_images": len(splits["train"]),
        "test_images": len(splits["test"]),
        "recipe": dataclasses.asdict(Recipe(epochs=args.epochs, widths=widths)),
        "jaxcifar": {},
    }
    path = args.out / f"{args.name or 'speedrun-' + environment.device_slug(device)}.json"

    def add_row(row: dict) -> None:
        # Saved after every run, so a time limit striking later keeps all that was measured.
        results["runs"].append(row)
        measure.write_results(results, path)

    def run_ours(dtype: str) -> None:
        recipe = Recipe(epochs=args.epochs, dtype=dtype, widths=widths)
        _, results["jaxcifar"][dtype] = measure.measure(
            recipe, splits["train"], splits["test"], runs=args.runs, warmup=True,
            epoch_mode=args.epoch_mode, on_row=add_row,
        )  # fmt: skip
        measure.write_results(results, path)

    with xla_cache.compilation_cache(xla_cache.default_dir()):
        # Ours in the first dtype, then airbench94, then ours in the others: the comparison
        # comes first, so a time limit can cost only the extras.
        run_ours(args.dtypes[0])
        reason = airbench_missing()
        airbench_failed = False
        if reason is None:
            try:
                run_airbench(
                    splits["train"], splits["test"], args.runs, widths, args.epochs, add_row
                )
            except Exception as error:  # its failure is a result; ours in the other dtypes run
                traceback.print_exc()
                reason, airbench_failed = f"failed: {type(error).__name__}: {error}", True
        if reason is not None:
            results["skipped"].append({"system": AIRBENCH, "reason": reason})
            print(f"{AIRBENCH} skipped: {reason}")
        for dtype in args.dtypes[1:]:
            run_ours(dtype)
    print(" ".join(str(p) for p in measure.write_results(results, path)))
    if airbench_failed:
        sys.exit(1)


if __name__ == "__main__":
    run_script(main)
