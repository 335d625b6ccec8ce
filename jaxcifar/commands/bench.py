"""Time the jitted training step of each model, batch size and compute dtype (compile time,
median/p10/p90 step time, images/s, FLOPs from XLA's cost analysis), epochs as a Python loop
and as one lax.scan, and the same steps in NumPy (scratch MLP) and PyTorch (seed CNN), all in
one process on one machine. Writes <name>.json, <name>.md and <name>.png into --out: without
--name, a stem no earlier run's files there use (<device>-<date>, else -2, -3, ...); an explicit
--name overwrites. The JSON and markdown are rewritten after every case, so a run stopped early
keeps its rows, marked as K of N cases (and no plot)."""

from __future__ import annotations

import argparse
import datetime
import sys

from jaxcifar import folder_lock, interrupt
from jaxcifar.bench.settings import Settings
from jaxcifar.bench.timing import TimingBudget
from jaxcifar.commands.arguments import (
    check_writable_folder, file_stem, non_negative_float, non_negative_int, output_folder,
    positive_int,
)
from jaxcifar.config import DTYPES, MODELS
from jaxcifar.errors import ConfigError

HELP = "benchmark training step times against NumPy and PyTorch"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults, budget = Settings(), TimingBudget()
    parser.add_argument(
        "--models", nargs="+", choices=MODELS, default=list(defaults.models), help="models to time"
    )
    parser.add_argument(
        "--batch-sizes", nargs="+", type=positive_int, default=list(defaults.batch_sizes),
        help="batch sizes of the step cases",
    )  # fmt: skip
    parser.add_argument(
        "--dtypes", nargs="+", choices=DTYPES, default=list(defaults.dtypes), help="compute dtypes"
    )
    parser.add_argument(
        "--steps", type=positive_int, default=None,
        help="time exactly this many steps per case; when not given, at least --min-steps and "
        f"for at least --seconds-per-case, up to {budget.max_steps} steps (or --min-steps, if "
        "more), so fast cases get many samples and slow ones few",
    )  # fmt: skip
    parser.add_argument(
        "--min-steps", type=positive_int, default=budget.min_steps, help="timed steps per case"
    )
    parser.add_argument(
        "--seconds-per-case", type=non_negative_float, default=budget.min_seconds,
        help=f"time each case for at least this long, up to {budget.max_steps} timed steps "
        "(or --min-steps, if more)",
    )  # fmt: skip
    parser.add_argument(
        "--warmup", type=non_negative_int, default=budget.warmup,
        help="untimed steps before each case is timed (a JAX train step's timed first run, "
        "first_run_seconds, comes before them)",
    )  # fmt: skip
    parser.add_argument(
        "--no-reference",
        action="store_true",
        help="skip the matmul roof and the NumPy and PyTorch references",
    )
    parser.add_argument(
        "--torch-compile", action="store_true",
        help="also time the PyTorch CNN under torch.compile (each batch size compiles for a "
        "minute or more on a 2-core CPU); not with --no-reference",
    )  # fmt: skip
    parser.add_argument(
        "--torch-threads", type=positive_int, default=None,
        help="PyTorch intra-op threads (None: torch's default, one per core)",
    )  # fmt: skip
    parser.add_argument(
        "--epoch-images", type=non_negative_int, default=defaults.epoch_images,
        help="images in each timed epoch (synthetic data); 0 skips the epochs",
    )  # fmt: skip
    parser.add_argument(
        "--epoch-batch-sizes", nargs="+", type=positive_int, default=None,
        help="batch sizes of the timed epochs (when not given: "
        f"{' '.join(map(str, defaults.epoch_batch_sizes))})",
    )  # fmt: skip
    parser.add_argument("--out", type=output_folder, default="benchmarks/results", metavar="DIR",
                        help="output folder")
    parser.add_argument(
        "--name", type=file_stem,
        help="file name stem of the results; overwrites a run's of that name (None: "
        "<device kind>-<date>, e.g. cpu-2026-11-29 or nvidia-h200-2026-11-29, with -2, -3, "
        "... added when taken)",
    )  # fmt: skip
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def default_stem(out: str) -> str:
    """<device slug>-<date>, or with -2, -3, ... when earlier results in `out` use it (the
    same day's, or committed ones): a run without --name never overwrites another's."""
    from jaxcifar.bench import environment, output

    device = environment.device_slug(environment.device_name())
    base = f"{device}-{datetime.date.today().isoformat()}"
    stem = output.free_stem(out, base)
    if stem != base:
        print(f"jaxcifar bench: note: {out} already holds {base}'s results; writing {stem}.* "
              f"instead (--name {base} would overwrite them)", file=sys.stderr)  # fmt: skip
    return stem


def run(args: argparse.Namespace) -> int:
    """Run the benchmark: progress on stderr, the paths of the written files on stdout."""
    if args.epoch_images == 0 and args.epoch_batch_sizes is not None:
        # Else the sizes were ignored without a word: 0 images skip the timed epochs.
        raise ConfigError("--epoch-batch-sizes sets the timed epochs, which --epoch-images 0 "
                          "skips; drop one of them")  # fmt: skip
    epoch_batch_sizes = args.epoch_batch_sizes or list(Settings.epoch_batch_sizes)
    for flag, values in (("--models", args.models), ("--batch-sizes", args.batch_sizes),
                         ("--dtypes", args.dtypes), ("--epoch-batch-sizes", epoch_batch_sizes)):
        if twice := sorted({str(v) for v in values if values.count(v) > 1}):
            # Else each case ran twice, and one float32 row was given a ratio against the other.
            raise ConfigError(f"{flag}: {', '.join(twice)} given twice; name each once")
    if args.steps is not None:
        given = [flag for flag, value, default in (
            ("--min-steps", args.min_steps, TimingBudget.min_steps),
            ("--seconds-per-case", args.seconds_per_case, TimingBudget.min_seconds),
        ) if value != default]  # fmt: skip
        if given:  # else ignored without a word
            raise ConfigError(f"--steps times exactly {args.steps} steps a case; drop "
                              f"{' and '.join(given)}, or --steps")  # fmt: skip
        budget = TimingBudget.fixed(args.steps, warmup=args.warmup)
    else:
        max_steps = max(args.min_steps, TimingBudget.max_steps)
        budget = TimingBudget(args.warmup, args.min_steps, args.seconds_per_case, max_steps)
    settings = Settings(
        models=tuple(args.models), batch_sizes=tuple(args.batch_sizes), dtypes=tuple(args.dtypes),
        budget=budget, reference=not args.no_reference, torch_compile=args.torch_compile,
        torch_threads=args.torch_threads,
        epoch_images=args.epoch_images, epoch_batch_sizes=tuple(epoch_batch_sizes),
    )  # fmt: skip
    check_writable_folder(args.out)  # before the cases run, not after the first
    with folder_lock.holding(args.out):
        return _benchmark(args, settings)


def _benchmark(args: argparse.Namespace, settings: Settings) -> int:
    """Run `settings`' cases, writing --out's files after each and at the end."""
    from tqdm import tqdm

    from jaxcifar.bench import output, suite  # import JAX: after the flags' own checks

    planned = suite.plan(settings)
    stem = args.name or default_stem(args.out)  # before the bar, which its message would break
    bar = tqdm(
        total=len(planned[0]), unit="case", desc="bench", file=sys.stderr,
        disable=args.quiet or not sys.stderr.isatty(),  # a log file gets the case lines only
    )  # fmt: skip

    saved = 0  # cases whose results the files hold

    def on_case(case: suite.Case, row, seconds: float, results_so_far: dict) -> None:
        # The table so far, rewritten after every case: a run stopped early keeps its rows,
        # marked as K of N cases.
        nonlocal saved
        with interrupt.uncut():  # a signal waits for both files, then stops the run
            output.write_results(results_so_far, args.out, stem, plot=False)
            saved = results_so_far["cases"]["done"]
        tqdm.write(output.case_line(case.label, row, seconds), file=sys.stderr)
        bar.update()

    try:
        results = suite.run(settings, planned=planned, on_case=on_case)
        with interrupt.uncut():
            written = output.write_results(results, args.out, stem)
    except interrupt.Interrupted as stop:
        bar.close()
        kept = (f"their results are in {args.out / stem}.json and .md" if saved
                else "nothing was written")  # fmt: skip
        print(f"jaxcifar bench: {stop} after {saved} of {len(planned[0])} cases; {kept}",
              file=sys.stderr)  # fmt: skip
        return stop.exit_code
    bar.close()
    for path in written:
        print(path)
    return 0
