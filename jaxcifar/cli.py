"""The `jaxcifar` command line: one sub-command per module in `jaxcifar.commands`.

Each command module exposes `HELP` (one line), `add_arguments(parser)` and
`run(args) -> int`. Modules import JAX and friends inside `run`, so `--help` is fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import NoReturn

from jaxcifar import __version__, interrupt
from jaxcifar.errors import JaxcifarError

COMMANDS = ("train", "evaluate", "predict", "data", "scratch", "bench", "speedrun")


class _OneLineErrorParser(argparse.ArgumentParser):
    """Reports a bad flag as one line, `jaxcifar CMD: error: ...`, exit 2: no usage dump."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    """The full parser, every sub-command registered."""
    parser = _OneLineErrorParser(
        prog="jaxcifar",
        description="Train and benchmark image classifiers on CIFAR-10 and MNIST-style data "
        "with jit-compiled JAX. Run `jaxcifar COMMAND --help` for a command's flags.",
    )
    parser.add_argument("--version", action="version", version=f"jaxcifar {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"jaxcifar.commands.{name}")
        sub = commands.add_parser(
            name,
            help=module.HELP,
            description=module.__doc__,
            formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        )
        module.add_arguments(sub)
        sub.set_defaults(run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse `argv`, run the command, and turn project errors into one-line messages.

    Exit status: 2 for a `JaxcifarError` (bad flag, data or checkpoint), 1 for an OSError
    the command did not expect (disk full, permission denied, ...) or too little memory,
    130 for Ctrl-C.
    """
    prefix = "jaxcifar"
    try:
        # Inside the try: building the parser imports the command modules and NumPy (about
        # 0.1 s), and a Ctrl-C then must read as one line too, not as an import's traceback.
        args = build_parser().parse_args(argv)
        prefix = " ".join([prefix, args.command, *filter(None, [getattr(args, "action", None)])])
        with interrupt.resend_dropped_signals(), warnings.catch_warnings():
            warnings.showwarning = _one_line_warning(prefix)
            return int(args.run(args) or 0)
    except JaxcifarError as error:
        print(f"{prefix}: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        # An I/O failure is the machine's, not a bug: the path and the reason say it all.
        paths = [str(name) for name in (error.filename, error.filename2) if name is not None]
        print(": ".join([f"{prefix}: error: {error.strerror or error}", *paths]), file=sys.stderr)
        return 1
    except (MemoryError, jax_runtime_error()) as error:
        # NumPy's MemoryError, XLA's RESOURCE_EXHAUSTED or its CPU client's "Out of memory
        # allocating N bytes": the sizes asked for do not fit; any other runtime error is a
        # bug and keeps its traceback.
        if isinstance(error, MemoryError) or any(
            sign in str(error) for sign in ("RESOURCE_EXHAUSTED", "Out of memory")
        ):
            reason = str(error).strip().splitlines()[0] if str(error).strip() else "MemoryError"
            print(f"{prefix}: error: out of memory ({reason}); try a smaller batch, smaller "
                  "layers or fewer images", file=sys.stderr)  # fmt: skip
            return 1
        raise
    except KeyboardInterrupt:
        print(f"{prefix}: interrupted", file=sys.stderr)
        return 130


def _one_line_warning(prefix: str) -> Callable[..., None]:
    """A `warnings.showwarning` that prints `PREFIX: warning: MESSAGE` on stderr: a command's
    user reads what went wrong, not the source line that warned (JAX's or ours)."""

    def show(message: Warning | str, *args: object, **kwargs: object) -> None:
        print(f"{prefix}: warning: {message}", file=sys.stderr)

    return show


def jax_runtime_error() -> type[Exception]:
    """JAX's runtime error class when JAX is already imported (a command that ran out of
    device memory imported it), else a class nothing raises: --help never imports JAX."""
    jax_errors = sys.modules.get("jax.errors")
    return getattr(jax_errors, "JaxRuntimeError", _NeverRaised)


class _NeverRaised(Exception):
    """Stands in for an exception class whose module was never imported."""


if __name__ == "__main__":
    sys.exit(main())
