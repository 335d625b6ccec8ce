"""Time loading CIFAR-10 from the JPEG tarball: first load (decode, fresh cache) and cached loads.

Usage: python benchmarks/data_load.py [--data-dir ../shared/data] [--repeats 3]
The first load reads the tarball in one pass, decodes all 60,000 JPEGs and writes the
cache; the cached loads read one split back from it (what every later run pays).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from bench_paths import SHARED_DATA, run_script
from jaxcifar.commands.arguments import positive_int
from jaxcifar.data import load
from jaxcifar.data.cache import CACHE_ENV


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=SHARED_DATA)
    parser.add_argument("--repeats", type=positive_int, default=3, help="cached loads to time")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="jaxcifar-bench-cache-") as cache:
        os.environ[CACHE_ENV] = cache
        start = time.perf_counter()
        train = load("cifar10", "train", data_dir=args.data_dir)
        first = time.perf_counter() - start
        print(f"first load (decode 60,000 JPEGs, write cache): {first:6.2f} s  ({train.source})")
        for split in ("test", "train"):
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                data = load("cifar10", split, data_dir=args.data_dir)
                times.append(time.perf_counter() - start)
            print(f"cached load, {split:<5} {data.images.shape}: best {min(times):.3f} s, "
                  f"worst {max(times):.3f} s over {args.repeats}")
    print(f"cpu cores: {os.cpu_count()}, load average now: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    run_script(main)
