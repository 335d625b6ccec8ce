"""Time the seed recipe (batch 4, SGD 0.001/0.9, 10 epochs) along each training path, side by
side in one process, and write benchmarks/results/seed-recipe-<device>.json and .md.

Usage: python benchmarks/seed_recipe.py [--data-dir ../shared/data] [--paths loop scan ...]
       [--epochs 10] [--limit-train N --limit-test N] [--unroll 1 ...] [--out benchmarks/results]
       [--name STEM] [--append] [--profile PATH ...] [--graph-paths PATH ...]

Paths are `jaxcifar train --epoch-mode` values (jaxcifar.bench.seed_recipe): loop, chunk, scan, and
the fused path in plain JAX (fused), with its dense head in two Pallas kernels (fused-pallas) or
its whole step in six (fused-pallas-all); Pallas runs in interpret mode on a CPU, where it only
shows that the path runs: its time means nothing there. Every path trains the same recipe from
the same initial parameters; `--limit-train` makes a CPU run short enough to finish. A path that
fails (say, a Pallas kernel the GPU's compiler rejects) is reported with its error and the
others still run. `--append` adds the rows to the results file an earlier run wrote (from
another process: a GPU fault in one cannot cost the other's rows). Several `--unroll` values
(steps per loop iteration of the fused paths) measure every path at the first value and the
fused paths at each further one too, each path's runs in a row. `--profile PATH` traces one
more epoch of the paths it names at the first value with JAX's profiler and adds the device
time per kernel to its row and a table to the markdown (on a GPU: a CPU has no device planes).
`--graph-paths PATH` runs the fused paths it names again, right after each of their runs, with
each epoch compiled to be one CUDA graph where it fits (`FusedRunner(graph=True)`: on a GPU,
fused-pallas-all's; on a CPU the same program)."""

from __future__ import annotations

import argparse
from pathlib import Path

from bench_paths import RESULTS, SHARED_DATA, run_script
from jaxcifar.bench.environment import device_name, device_slug
from jaxcifar.commands.arguments import file_stem, positive_int
from jaxcifar.config import RunConfig
from jaxcifar.data import load_split
from jaxcifar.bench.seed_recipe import PATHS, measure_path, read_results, run_label, write_results
from jaxcifar.fused.epoch import PALLAS_PARTS
from jaxcifar.train import FUSED_MODES


def plan_runs(paths: list[str], unrolls: list[int], profile: list[str],
              graph_paths: list[str]) -> list[tuple[str, int, bool, bool]]:  # fmt: skip
    """The (path, unroll, graph, profile) runs in the order they run: each path's one after
    another (a time limit that stops the process costs the last paths, not every path's
    later unrolls), a fused path at each unroll, each run of a path in `graph_paths` again
    as a graph epoch, a path in `profile` profiled at the first unroll (not as a graph
    epoch), and the Pallas paths last: their Triton kernels are the least proven code here,
    and a compile that hangs or a fault that breaks the GPU context would cost every run
    after it."""
    runs = [
        (path, unroll, graph, path in profile and i == 0 and not graph)
        for path in paths
        for i, unroll in enumerate(unrolls if path in FUSED_MODES else unrolls[:1])
        for graph in ((False, True) if path in graph_paths else (False,))
    ]
    return sorted(runs, key=lambda run: bool(PALLAS_PARTS.get(run[0])))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=SHARED_DATA)
    parser.add_argument("--paths", nargs="+", choices=PATHS, default=list(PATHS))
    parser.add_argument("--epochs", type=positive_int, default=RunConfig().epochs)
    parser.add_argument("--limit-train", type=positive_int, help="train on a random N-image subset")
    parser.add_argument("--limit-test", type=positive_int, help="test on a random N-image subset")
    parser.add_argument("--unroll", type=positive_int, nargs="+", default=[1],
                        help="steps per loop iteration of the fused paths; one run per value")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--name", type=file_stem, help="file stem (default: seed-recipe-<device>)")
    parser.add_argument("--append", action="store_true",
                        help="keep the rows and failures already in the results file")
    parser.add_argument("--profile", nargs="+", choices=PATHS, default=[], metavar="PATH",
                        help="trace one more epoch of these paths at the first --unroll and "
                        "record its device time per kernel")
    parser.add_argument("--graph-paths", nargs="+", choices=FUSED_MODES, default=[],
                        metavar="PATH", help="run these fused paths again with each epoch "
                        "compiled to be one CUDA graph where it fits (fused-pallas-all)")
    args = parser.parse_args()

    config = RunConfig(epochs=args.epochs)
    splits = {
        split: load_split(
            config.dataset, split, data_dir=args.data_dir, limit=limit, seed=config.seed
        )
        for split, limit in (("train", args.limit_train), ("test", args.limit_test))
    }
    stem = args.name or f"seed-recipe-{device_slug(device_name())}"
    runs = plan_runs(args.paths, args.unroll, args.profile, args.graph_paths)
    json_path = args.out / f"{stem}.json"
    rows, failures = read_results(json_path) if args.append else ([], [])
    for path, unroll, graph, profile in runs:
        try:
            rows.append(measure_path(
                path, config, splits["train"], splits["test"], unroll=unroll, graph=graph,
                profile=profile,
            ))  # fmt: skip
        except Exception as error:  # one path failing is a result too; measure the rest
            label = run_label(path, unroll, graph)
            failures.append(f"{label}: {type(error).__name__}: {error}")
            print(f"failed: {failures[-1]}")
        # Rewritten after every path: a run cut short by a timeout keeps what it measured.
        written = write_results(rows, json_path, failures=failures)
    print(" ".join(str(path) for path in written))


if __name__ == "__main__":
    run_script(main)
