"""What the scripts in benchmarks/ share: where they read data and write results unless told
otherwise, and how they end on bad input.

Each script runs as `python benchmarks/<script>.py`, which puts this folder on sys.path.
"""

import sys
import warnings
from collections.abc import Callable
from pathlib import Path

from jaxcifar.cli import one_line_warning
from jaxcifar.errors import JaxcifarError

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"  # the offline datasets beside a checkout
RESULTS = REPO / "benchmarks" / "results"


def run_script(main: Callable[[], None]) -> None:
    """Run a script's `main`; a project error (a --data-dir that does not exist or holds no
    CIFAR-10, say) ends it with one line naming the script, exit 2, and each warning is one
    line naming it, as the CLI's commands do, instead of a traceback or a source line."""
    name = Path(sys.argv[0]).name
    with warnings.catch_warnings():
        warnings.showwarning = one_line_warning(name)
        try:
            main()
        except JaxcifarError as error:
            print(f"{name}: error: {error}", file=sys.stderr)
            sys.exit(2)
