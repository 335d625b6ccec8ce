"""SIGINT, SIGTERM and SIGHUP as an exception, so a long command can stop cleanly and say how
to resume.

Python turns SIGINT into KeyboardInterrupt and leaves SIGTERM and SIGHUP (a closed terminal,
a dropped ssh session) to kill the process outright; inside `StopOnSignal` each raises
`Interrupted` in the main thread instead, between two Python bytecodes (a running XLA
computation finishes first). A block run under `hold()` (writing a checkpoint) is never cut
short: a signal that arrives during it is raised when it ends. A signal the process was
started to ignore stays ignored: SIGHUP under `nohup` (so that the run outlives its terminal),
SIGINT in a job a script started in the background (so that a Ctrl-C meant for the script
spares it).
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any

_SIGHUP = getattr(signal, "SIGHUP", None)  # POSIX only
SIGNALS = tuple(signum for signum in (signal.SIGINT, signal.SIGTERM, _SIGHUP) if signum)
EXIT_CODES = frozenset(128 + signum for signum in SIGNALS)  # a command stopped by one of them


class Interrupted(BaseException):
    """One of SIGNALS arrived. Not a JaxcifarError: it is no mistake to report, and the
    exit status (`exit_code`, 128 + the signal number, as a shell reports a killed process)
    differs from the usage-error status 2. A BaseException, as KeyboardInterrupt is: the
    `except Exception` that turns any decoder failure into "not a readable image" must not
    turn a Ctrl-C during the first decode of a dataset into a data error."""

    def __init__(
        self, signum: int, *, process: int | None = None, report: dict[str, Any] | None = None
    ):
        """`process`: another process of a multi-process run, the one the signal stopped
        (`report`: what it published, `jaxcifar.peers`); None for this one."""
        self.signum = signum
        self.name = signal.Signals(signum).name
        self.exit_code = 128 + signum
        self.report = report
        who = "" if process is None else f"process {process} was "
        super().__init__(f"{who}interrupted by {self.name}")


class StopOnSignal:
    """Context manager: within it, each of SIGNALS raises `Interrupted` (but one the process
    ignores); on exit the previous handlers come back. Only the main thread handles signals
    (Python's rule): entered in another, it changes nothing, and no signal is raised there."""

    def __init__(self) -> None:
        self._holding = False
        self._deferring = False
        self._finished = False
        self._pending: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            self._previous = {
                signum: signal.signal(signum, self._handle)
                for signum in SIGNALS
                if signal.getsignal(signum) is not signal.SIG_IGN
            }
        return self

    def __exit__(self, *exc_info: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self._finished:
            return
        if self._holding or (self._deferring and self._pending is None):
            self._pending = self._pending or signum
        else:
            self._pending = None  # (a deferred one: this one, insisting, stands for both)
            raise Interrupted(signum)

    def finish(self) -> None:
        """The work is done and saved: a signal from now on, or one held back until now, is
        ignored, so that a Ctrl-C as the command ends does not report finished work as
        stopped."""
        self._finished, self._pending = True, None

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        """Run the block to its end even if a signal arrives; raise `Interrupted` after it
        (unless `finish` was called within it, or `defer` keeps the signal waiting)."""
        self._holding = True
        try:
            yield
        finally:
            self._holding = False
        if not self._deferring:
            self._raise_pending()

    @contextlib.contextmanager
    def defer(self) -> Iterator[None]:
        """Within it, a first signal waits to be taken (`take_pending`) at a point where every
        process of a multi-process run can stop together; a second one, the user insisting,
        raises at once, and one not taken when the block ends raises then."""
        self._deferring = True
        try:
            yield
        finally:
            self._deferring = False
        self._raise_pending()

    def take_pending(self) -> int | None:
        """The signal `defer` holds back, if any, which is then no longer pending."""
        signum, self._pending = self._pending, None
        return signum

    def _raise_pending(self) -> None:
        if self._pending is not None:
            raise Interrupted(self.take_pending())


@contextlib.contextmanager
def uncut() -> Iterator[None]:
    """Run the block (writing a set of files) to its end whatever signal arrives; one that
    arrived meanwhile raises `Interrupted` when it ends. A stop between two files of a set
    left half of it: one figure of three and no metrics.json."""
    with StopOnSignal() as signals, signals.hold():
        yield


@contextlib.contextmanager
def resend_dropped_signals() -> Iterator[None]:
    """Within it, a signal of SIGNALS whose exception Python dropped is sent again.

    A signal handler's exception (KeyboardInterrupt, `Interrupted`) raised while Python runs a
    garbage-collector callback (JAX registers one) or a finaliser cannot propagate: Python
    prints "Exception ignored" and the command runs on to its end. Such a signal is sent
    again 10 ms later from another thread, when the main thread is back in ordinary code; one
    still waiting when the block ends is sent at once, so the block's caller gets it.
    Entered in another thread than the main one, which alone handles signals, it does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = sys.unraisablehook
    waiting: dict[threading.Thread, int] = {}  # timer (a Thread) -> signal number

    main_thread = threading.get_ident()

    def resend(signum: int) -> None:
        waiting.pop(threading.current_thread(), None)
        # To the main thread, not the process: the kernel may hand a process-wide signal to
        # this timer thread, and then a main thread blocked in a system call (a sleep, a
        # read) runs the handler only when the call returns by itself.
        signal.pthread_kill(main_thread, signum)

    def hook(unraisable: Any) -> None:
        signum = _signal_of(unraisable.exc_value)
        if signum is None:
            previous(unraisable)
            return
        timer = threading.Timer(0.01, resend, (signum,))
        timer.daemon = True
        waiting[timer] = signum
        timer.start()

    sys.unraisablehook = hook
    try:
        yield
    finally:
        sys.unraisablehook = previous
        late = set(waiting.values())
        for timer in list(waiting):
            timer.cancel()  # type: ignore[attr-defined]
        waiting.clear()
        for signum in late:  # its handler runs here, on an ordinary line
            signal.pthread_kill(main_thread, signum)


def _signal_of(error: BaseException | None) -> int | None:
    """The signal number a handler's exception stands for, else None."""
    if isinstance(error, KeyboardInterrupt):
        return signal.SIGINT
    if isinstance(error, Interrupted):
        return error.signum
    return None

