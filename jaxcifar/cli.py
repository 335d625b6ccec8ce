"""The `jaxcifar` command line: one sub-command per module in `jaxcifar.commands`.

Each command module exposes `HELP` (one line), `add_arguments(parser)` and
`run(args) -> int`. Modules import JAX and friends inside `run`, so `--help` is fast.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import importlib
import os
import select
import signal
import sys
import traceback
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import NoReturn, TextIO

from jaxcifar import __version__, interrupt, parallel, peers
from jaxcifar.errors import JaxcifarError, one_line, os_error_text

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

    Exit status: 2 for a `JaxcifarError` (bad flag, data or checkpoint) or a JAX platform
    that cannot start, 1 for an OSError the command did not expect (disk full, permission
    denied, ...) or too little memory, 128 + the signal's number for SIGINT (Ctrl-C, 130),
    SIGTERM (143) or SIGHUP (129), 141 when stdout's reader has gone.
    """
    prefix = "jaxcifar"
    _escape_what_stdout_cannot_encode()
    try:
        # Inside the try: building the parser imports the command modules and NumPy (about
        # 0.1 s), and a Ctrl-C then must read as one line too, not as an import's traceback.
        parser = build_parser()
        args, unknown = parser.parse_known_args(argv)
        prefix = " ".join([prefix, args.command, *filter(None, [getattr(args, "action", None)])])
        if unknown:  # named by the command's prefix: argparse's own error names the root's
            parser.exit(2, f"{prefix}: error: unrecognized arguments: {' '.join(unknown)} "
                        f"(see `{prefix} --help`)\n")  # fmt: skip
        # StopOnSignal: SIGTERM or SIGHUP, too, unwinds the command (train and speedrun nest
        # their own, to say how to go on): a killed one left an empty --out it had made. It
        # is outermost, so that a signal resent as the command ends still finds it.
        with interrupt.StopOnSignal() as signals:
            with interrupt.resend_dropped_signals(), warnings.catch_warnings(), \
                    peers.leaving(), _stdout_named_in_errors():  # fmt: skip
                warnings.showwarning = one_line_warning(prefix)
                if args.command != "train":
                    parallel.warn_of_ignored_variables(f"jaxcifar {args.command}")
                code = int(args.run(args) or 0)
                _flush(sys.stdout)  # here: a stdout that cannot be written fails the command
            signals.finish()  # the work is done: a signal now does not report it as stopped
            return code
    except JaxcifarError as error:
        print(f"{prefix}: error: {one_line(str(error))}", file=sys.stderr)
        return 2
    except OSError as error:
        if isinstance(error, BrokenPipeError) and _stdout_reader_gone():
            return _stdout_gone()
        # An I/O failure is the machine's, not a bug: the path and the reason say it all.
        print(f"{prefix}: error: {one_line(os_error_text(error))}", file=sys.stderr)
        return 1
    except (MemoryError, jax_runtime_error()) as error:
        # NumPy's MemoryError, XLA's RESOURCE_EXHAUSTED or its CPU client's "Out of memory
        # allocating N bytes": the sizes asked for do not fit; any other runtime error is a
        # bug and keeps its traceback.
        if isinstance(error, MemoryError) or any(
            sign in str(error) for sign in ("RESOURCE_EXHAUSTED", "Out of memory")
        ):
            reason = _first_line(error, "MemoryError")
            print(f"{prefix}: error: out of memory ({reason}); try a smaller batch, smaller "
                  "layers or fewer images", file=sys.stderr)  # fmt: skip
            return 1
        raise
    except (RuntimeError, AssertionError) as error:
        # JAX's backend not starting: JAX_PLATFORMS naming a platform it cannot start (a
        # RuntimeError, or, for one with no device found, an AssertionError inside JAX's
        # backend setup), or the other processes of a multi-process run missing.
        if not _platform_failed(error):
            raise
        # (The AssertionError, message-less, is JAX finding no device of the platforms named.)
        reason = _first_line(error, "no device of it found")
        if _in_distributed_run():  # the backend starts with every process, or not at all
            print(f"{prefix}: error: JAX could not start its backend with the run's other "
                  f"processes ({reason}); start every process, with the same flags, and check "
                  "that each reaches the coordinator", file=sys.stderr)  # fmt: skip
        elif platforms := os.environ.get("JAX_PLATFORMS"):
            print(f"{prefix}: error: JAX could not start JAX_PLATFORMS={platforms!r} ({reason}); "
                  "run where that platform's device and JAX plugin are, or unset JAX_PLATFORMS",
                  file=sys.stderr)  # fmt: skip
        else:
            print(f"{prefix}: error: JAX could not start a platform ({reason})", file=sys.stderr)
        return 2
    except interrupt.Interrupted as stop:
        print(f"{prefix}: {stop}", file=sys.stderr)
        return stop.exit_code
    except KeyboardInterrupt:  # Ctrl-C before the command's start (the parser's imports)
        print(f"{prefix}: interrupted by SIGINT", file=sys.stderr)
        return 130


def run_program(argv: Sequence[str] | None = None) -> NoReturn:
    """The `jaxcifar` program (its console script and `python -m jaxcifar`): `main`, then exit
    with its status.

    A run stopped by a signal exits at once, without Python's shutdown: JAX compiles on XLA's
    own threads, and the interpreter torn down under a compile that is still running crashed
    the process (SIGSEGV, exit 139) after its "interrupted" line. The command's own files
    are whole by then (written atomically). stdout is flushed here rather than in the
    shutdown, where a reader that has gone (`| head -1`) would print a traceback.
    """
    code = main(argv)
    try:  # what a command printed before it failed or was stopped
        with _naming_stdout():
            _flush(sys.stdout)
    except BrokenPipeError:
        gone = _stdout_gone()
        code = code or gone  # a failure's or a signal's own status says more
    except OSError as error:
        print(f"jaxcifar: error: {one_line(os_error_text(error))}", file=sys.stderr)
        code = code or 1
    if code in interrupt.EXIT_CODES:
        _leave_distributed_run()
        with contextlib.suppress(OSError, ValueError):
            sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


def _leave_distributed_run() -> None:
    """Leave a multi-process run, as JAX's exit handler (which `os._exit` skips) would: without
    it, the other processes abort, or wait out a heartbeat timeout."""
    if _in_distributed_run():
        with contextlib.suppress(Exception):  # a run already torn by the signal: exit anyway
            sys.modules["jax.distributed"].shutdown()


def _in_distributed_run() -> bool:
    """Whether this process joined a multi-process run (without importing JAX to ask)."""
    distributed = sys.modules.get("jax.distributed")
    return distributed is not None and distributed.is_initialized()


def _stdout_reader_gone() -> bool:
    """Whether stdout is a pipe whose reader has gone, as poll reports it (POLLERR), so that a
    BrokenPipeError is told from another file's, an I/O error to report."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no poll (Windows); no fd (pytest's capture)
        return False


def _stdout_gone() -> int:
    """The reader of stdout has gone (`jaxcifar predict ... | head -1`): stop without a word,
    as a shell's tools do, with SIGPIPE's status, 141. stdout then writes to the null device
    (os.devnull), so that no later flush fails again."""
    with contextlib.suppress(OSError, ValueError):  # (pytest's captured stdout has no fd)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    return 128 + signal.SIGPIPE


def _flush(stream: object) -> None:
    """Flush `stream` (sys.stdout), if it is there and can be flushed: None where the process
    started with stdout closed; a caller's stand-in may lack `flush`."""
    flush = getattr(stream, "flush", None)
    if flush is not None:
        flush()


@contextlib.contextmanager
def _stdout_named_in_errors() -> Iterator[None]:
    """Within the block, sys.stdout is `_StdoutNamedInErrors` around itself."""
    stdout = sys.stdout
    sys.stdout = _StdoutNamedInErrors(stdout)
    try:
        yield
    finally:
        sys.stdout = stdout


class _StdoutNamedInErrors:
    """A text stream whose write errors name it (`No space left on device: <stdout>`): the OS's
    reason alone, for `jaxcifar data info > /dev/full` or a full disk, named no file. A stdout
    closed when the process started (`>&-`, which Python holds as None) fails the first write
    as "Bad file descriptor", as one opened for reading does, rather than drop the output.
    All else is the stream's own."""

    def __init__(self, stream: TextIO | None) -> None:
        self._stream = stream

    def __getattr__(self, name: str) -> object:
        return getattr(self._stream, name)

    def write(self, text: str) -> int:
        if self._stream is None:
            raise OSError(errno.EBADF, os.strerror(errno.EBADF), "<stdout>")
        with _naming_stdout():
            return self._stream.write(text)

    def flush(self) -> None:
        with _naming_stdout():
            _flush(self._stream)


@contextlib.contextmanager
def _naming_stdout() -> Iterator[None]:
    """Re-raise an OSError that names no file as the same error naming `<stdout>` (a
    BrokenPipeError stays one)."""
    try:
        yield
    except OSError as error:
        if error.filename is not None or error.errno is None:
            raise
        raise OSError(error.errno, error.strerror, "<stdout>") from None


def _first_line(error: BaseException, default: str) -> str:
    """The first line of `error`'s message, or `default` for an error without one."""
    text = str(error).strip()
    return text.splitlines()[0] if text else default


def _platform_failed(error: BaseException) -> bool:
    """Whether `error` is JAX failing to start its backend (the platforms JAX_PLATFORMS
    names, or with a multi-process run's other processes)."""
    if isinstance(error, RuntimeError) and str(error).startswith("Unable to initialize backend"):
        return True
    frames = traceback.extract_tb(error.__traceback__)
    in_backend_setup = os.path.join("jax", "_src", "xla_bridge.py")
    if frames and frames[-1].filename.endswith(in_backend_setup):
        return True
    # JAX_PLATFORMS=cuda without the plugin, where the command's first JAX call is a
    # computation (evaluate's and predict's first key): the AssertionError comes from JAX's
    # dispatch instead. Whether the backend starts now tells it from any other error.
    jax = sys.modules.get("jax")
    if isinstance(error, AssertionError) and jax is not None:
        try:
            jax.devices()
        except (RuntimeError, AssertionError):
            return True
    return False


def _escape_what_stdout_cannot_encode() -> None:
    """Print what stdout's encoding cannot hold as backslash escapes rather than fail: a path
    that is not UTF-8 (lone surrogates in Python) in a command's last line (evaluate's score,
    data info's source) failed it with UnicodeEncodeError, after its work, where stdout is
    strict UTF-8 (PYTHONIOENCODING=utf-8). stderr escapes so already (Python's default)."""
    reconfigure = getattr(sys.stdout, "reconfigure", None)
    if reconfigure is not None:
        reconfigure(errors="backslashreplace")


def one_line_warning(prefix: str) -> Callable[..., None]:
    """A `warnings.showwarning` that prints `PREFIX: warning: MESSAGE` on stderr: a command's
    user reads what went wrong, not the source line that warned (JAX's or ours)."""

    def show(message: Warning | str, *args: object, **kwargs: object) -> None:
        print(f"{prefix}: warning: {one_line(str(message))}", file=sys.stderr)

    return show


def jax_runtime_error() -> type[Exception]:
    """JAX's runtime error class when JAX is already imported (a command that ran out of
    device memory imported it), else a class nothing raises: --help never imports JAX."""
    jax_errors = sys.modules.get("jax.errors")
    return getattr(jax_errors, "JaxRuntimeError", _NeverRaised)


class _NeverRaised(Exception):
    """Stands in for an exception class whose module was never imported."""


if __name__ == "__main__":
    run_program()
