"""Where the scripts in benchmarks/ read data and write results unless told otherwise.

Each script runs as `python benchmarks/<script>.py`, which puts this folder on sys.path.
"""

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"  # the offline datasets beside a checkout
RESULTS = REPO / "benchmarks" / "results"
