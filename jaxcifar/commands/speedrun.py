"""Train the fast CIFAR-10 recipe (airbench94 in JAX) N times and report each run's
training time (whitening + training + TTA test predictions, compilation timed apart; warm from
the second run on, the first being its programs' first run, which on a GPU loads their
kernels: `benchmarks/speedrun.py` runs an untimed warm-up first) and TTA test accuracy.
Writes OUT/speedrun.json ({"device", "runs": [{"system", "seed", "dtype", "train_seconds",
"cold_seconds", "tta_test_accuracy"}], "model": {"file", "run", "seed"},
...}), OUT/speedrun.md, and OUT/model.msgpack, the last run's trained model with its seed,
data subsets and data's path (`jaxcifar evaluate` and `predict` read it; evaluate tests on the
same subset, of that data when no --data-dir is given).
Compiled programs persist in --compile-cache, so a second process starts warm."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jaxcifar import folder_lock
from jaxcifar.commands.arguments import (
    add_compile_cache_argument, add_data_arguments, check_not_a_training_run,
    check_writable_folder, positive_float, output_folder, positive_int, seed_int,
)
from jaxcifar.config import SEED_MAX
from jaxcifar.errors import ConfigError
from jaxcifar.interrupt import Interrupted, StopOnSignal

if TYPE_CHECKING:
    from jaxcifar.speedrun.recipe import Recipe


HELP = "time the fast CIFAR-10 recipe (airbench94 in JAX) over N runs"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from jaxcifar.speedrun.recipe import DTYPES, EPOCH_MODES, Recipe

    recipe = Recipe()
    add_data_arguments(parser)
    parser.add_argument("--runs", type=positive_int, default=1,
                        help="timed runs (seeds SEED, SEED+1, ...); model.msgpack keeps the "
                        "last")  # fmt: skip
    parser.add_argument("--epochs", type=positive_float, default=recipe.epochs,
                        help="epochs; a fraction runs part of the last one")  # fmt: skip
    parser.add_argument("--batch-size", type=positive_int, default=recipe.batch_size,
                        help="batch size (lr and weight decay are per 1024 images)")  # fmt: skip
    for split in ("train", "test"):
        parser.add_argument(f"--limit-{split}", type=positive_int, metavar="N",
                            help=f"{split} on a random N-image subset")  # fmt: skip
    parser.add_argument("--widths", type=positive_int, nargs="+", default=list(recipe.widths),
                        metavar="W", help="channels of the conv blocks")  # fmt: skip
    parser.add_argument("--dtype", choices=DTYPES, default=recipe.dtype,
                        help="compute dtype (parameters stay float32)")  # fmt: skip
    parser.add_argument("--epoch-mode", choices=EPOCH_MODES, default="auto",
                        help="scan: one lax.scan per epoch; loop: a jitted step per batch; "
                        "auto: scan")  # fmt: skip
    parser.add_argument("--seed", type=seed_int, default=0,
                        help="seed of the first run and of the subsets")  # fmt: skip
    add_compile_cache_argument(parser)
    parser.add_argument("--out", type=output_folder, default="runs/speedrun", metavar="DIR",
                        help="output folder")


def run(args: argparse.Namespace) -> int:
    from jaxcifar.speedrun.recipe import Recipe

    recipe = Recipe(
        epochs=args.epochs, batch_size=args.batch_size, widths=tuple(args.widths), dtype=args.dtype
    )
    if args.seed + args.runs - 1 > SEED_MAX:  # its later runs' seeds, which --seed refuses
        raise ConfigError(
            f"--seed {args.seed} --runs {args.runs}: the runs' seeds SEED..SEED+RUNS-1 go past "
            f"{SEED_MAX}; lower --seed to {SEED_MAX - args.runs + 1} or less"
        )
    check_writable_folder(args.out)  # before the data and the runs, not after
    check_not_a_training_run(args.out)
    path = args.out / "speedrun.json"
    results: dict[str, Any] = {}  # what speedrun.json holds, saved after every run
    try:
        # From the data's first decode (tens of seconds) to the last write.
        with folder_lock.holding(args.out), StopOnSignal() as signals:
            _speedrun(args, recipe, path, results, signals)
    except Interrupted as stop:
        done = len(results.get("runs", []))
        kept = (f"{path} keeps the {done} of {args.runs} runs that finished" if done
                else "no run finished, so nothing is saved")  # fmt: skip
        print(f"jaxcifar speedrun: {stop}; {kept}", file=sys.stderr)
        return stop.exit_code
    return 0


def _speedrun(
    args: argparse.Namespace, recipe: Recipe, path: Path, results: dict[str, Any],
    signals: StopOnSignal,
) -> None:  # fmt: skip
    """Load the data, then the runs: each run's row goes into `results["runs"]` and, with
    the run's model, is saved as the run ends, the writes held from `signals` so that the
    rows and the model stay a pair; at the end the measurement's details."""
    from jaxcifar import xla_cache
    from jaxcifar.bench import environment
    from jaxcifar.data import load_split
    from jaxcifar.reports import remove_evaluation_of
    from jaxcifar.speedrun import measure, model_file

    train_set, test_set = (
        load_split(args.dataset, split, data_dir=args.data_dir, limit=limit, seed=args.seed)
        for split, limit in (("train", args.limit_train), ("test", args.limit_test))
    )
    cache = xla_cache.resolve(args.compile_cache)
    device = environment.device_name()
    print(f"device: {device}; data: {train_set.source}; compile cache: {cache or 'off'}")
    results.update(
        device=device, runs=[], runs_planned=args.runs, warmup=False,
        recipe=dataclasses.asdict(recipe), dataset=args.dataset, train_images=len(train_set),
        test_images=len(test_set),
    )  # fmt: skip
    finished = []  # the row of the run that just ended, until its model is saved with it

    def save_run(speedrun, result) -> None:
        with signals.hold():
            if not results["runs"]:  # an evaluation of the model it replaces would outlive it
                remove_evaluation_of(args.out / model_file.FILENAME)
            saved = model_file.save(
                args.out, recipe, result.state.params, result.state.batch_stats,
                speedrun.train_data.mean, speedrun.train_data.std, dataset=args.dataset,
                class_names=train_set.class_names, input_shape=train_set.images.shape[1:],
                seed=result.seed,
                subsets=model_file.Subsets(args.seed, args.limit_train, args.limit_test),
                source=train_set.source,
            )  # fmt: skip
            results["runs"].append(finished.pop())
            run_number = len(results["runs"])
            results["model"] = {"file": saved.name, "run": run_number, "seed": result.seed}
            measure.write_results(results, path)

    with xla_cache.compilation_cache(cache):
        _, details = measure.measure(
            recipe, train_set, test_set, runs=args.runs, seed=args.seed,
            epoch_mode=args.epoch_mode, on_row=finished.append, on_result=save_run,
        )  # fmt: skip
    with signals.hold():
        results.update(details)
        model = results["model"]
        print(f"{model['file']}: the model of run {model['run']}/{args.runs} "
              f"(seed {model['seed']})")  # fmt: skip
        print(" ".join(str(written) for written in measure.write_results(results, path)))
