"""What the scripts in benchmarks/ share: where they read data and write results unless told
otherwise, and how they end on bad input.

Each script runs as `python benchmarks/<script>.py`, which puts this folder on sys.path.
"""

import sys
from collections.abc import Callable
from pathlib import Path

from jaxcifar.errors import JaxcifarError

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"  # the offline datasets beside a checkout
RESULTS = REPO / "benchmarks" / "results"


def run_script(main: Callable[[], None]) -> None:
    """Run a script's `main`; a project error (a --data-dir that does not exist or holds no
    CIFAR-10, say) ends it with one line naming the script, exit 2, as the CLI's commands
    end, instead of a traceback."""
    try:
        main()
    except JaxcifarError as error:
        print(f"{Path(sys.argv[0]).name}: error: {error}", file=sys.stderr)
        sys.exit(2)
