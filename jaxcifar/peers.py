"""What the processes of a multi-process run tell each other, so that one process failing,
stopping or differing stops them all at once, each with one line that names the cause.

Without it a process that fails alone (a bad --data-dir on one host, a checkpoint write that
fails on process 0, a Ctrl-C in one terminal) leaves the others waiting inside a collective
of the next training step, which XLA:CPU's gloo gives up after 30 s with a traceback, and
which a GPU's NCCL may not give up at all; and processes started with different flags train
different programs that meet in the same collectives. So:

- every process, however it leaves the command, first publishes how (`leaving`): finished,
  interrupted by a signal, or failed with the one-line message it prints;
- at an agreement point (`agree`) every process publishes what it is about to do, a few
  named facts (its configuration, data, checkpoint), and waits until every other process has
  published the same point, or has left: a process that left stops the others with its own
  reason, and facts that differ from process 0's stop every process with their names; at
  such a point `process_0s` hands every process process 0's verdict (is the run done?).

It goes through the key-value store of the coordination service that `jax.distributed`
starts in process 0: no device, no compiled program, about 0.4 ms a request. In a
one-process run every function here returns at once (`go_on` raises for its own signal).
A process killed outright (SIGKILL, a crash) publishes nothing: JAX's heartbeat check stops
the others about 100 s later.
"""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import time
import warnings
from collections.abc import Iterator, Mapping
from typing import Any

from jaxcifar.errors import ConfigError, JaxcifarError, os_error_text
from jaxcifar.interrupt import Interrupted

_LEFT = "jaxcifar/left/"  # + process id: how that process left the command (a report)
_GAVE_UP = "jaxcifar/gave-up/"  # + point + "/" + process id: left while waiting there
_AT = "jaxcifar/at/"  # + point + "/" + process id: its facts at an agreement point
# Polling starts fast, as a point is usually reached within milliseconds of the others, and
# backs off so a long wait (a peer decoding its dataset for 40 s) costs little.
_FIRST_POLL_SECONDS, _LAST_POLL_SECONDS = 0.001, 0.05
WAIT_NOTE_SECONDS = 60.0  # a wait this long says what it waits for, once


class PeerFailed(JaxcifarError):
    """Another process of the run failed, or left before an agreement point; `report` is what
    it published (its process id, how it left, its message)."""

    def __init__(self, message: str, report: Mapping[str, Any]):
        super().__init__(message)
        self.report = dict(report)


def _client() -> Any | None:
    """The coordination service's client of a multi-process run, else None (not imported,
    not joined, or a JAX without it; its module is private, so any change counts as none)."""
    if "jax.distributed" not in sys.modules:  # nothing joined a run: no need to import JAX
        return None
    try:
        from jax._src.distributed import global_state
    except ImportError:
        return None
    if global_state.client is None or (global_state.num_processes or 1) < 2:
        return None
    return global_state.client


def _process() -> tuple[int, int]:
    """(this process's id, the number of processes)."""
    from jax._src.distributed import global_state

    return global_state.process_id, global_state.num_processes


@contextlib.contextmanager
def leaving() -> Iterator[None]:
    """Run a command; when it ends, publish how this process left it, so that a process
    waiting in `agree` stops at once rather than waiting for it. A process stopped by another
    one's report passes that report on, so every message names the process it started in."""
    try:
        yield
    except BaseException as error:
        _publish_leaving(_report_of(error))
        raise
    _publish_leaving({"how": "finished"})


def tell_interrupted(stop: Interrupted) -> None:
    """Publish that `stop` ends this process's command: for a command that handles its own
    interrupt and returns a status, which `leaving` would take for finishing."""
    _publish_leaving(_report_of(stop))


def _report_of(error: BaseException) -> dict[str, Any]:
    report = getattr(error, "report", None)
    if report is not None:  # another process's, passed on
        return report
    if isinstance(error, (Interrupted, KeyboardInterrupt)):
        signum = error.signum if isinstance(error, Interrupted) else signal.SIGINT
        return {"how": "interrupted", "signum": signum}
    if isinstance(error, JaxcifarError):
        message = str(error)
    elif isinstance(error, OSError):
        message = os_error_text(error)
    else:
        lines = str(error).strip().splitlines()
        message = f"{type(error).__name__}: {lines[0] if lines else ''}".rstrip(": ")
    return {"how": "failed", "message": message}


def _publish_leaving(report: dict[str, Any]) -> None:
    client = _client()
    if client is None:
        return
    process, _ = _process()
    report = {"process": process, **report}
    # Best effort: this process is leaving anyway, and must not fail on the way out (the
    # coordinator may be gone, or an earlier report of this process already there).
    with contextlib.suppress(Exception):
        client.key_value_set(_LEFT + str(process), json.dumps(report))


def _stop_from(report: Mapping[str, Any], point: str) -> BaseException:
    """The exception that stops this process because of another's `report`."""
    process = report["process"]
    if report["how"] == "interrupted":
        return Interrupted(report["signum"], process=process, report=report)
    if report["how"] == "failed":
        return PeerFailed(f"process {process} failed: {report['message']}", report)
    return PeerFailed(
        f"process {process} ended the command before {point}; start every process with the "
        "same flags, data and checkpoint",
        {**report, "how": "failed", "message": f"it ended the command before {point}"},
    )


def peer_stop() -> BaseException | None:
    """The exception for the first other process that has left the run without finishing it
    (failed or interrupted), else None: for a process whose collective failed, to say why."""
    client = _client()
    if client is None:
        return None
    process, _ = _process()
    with contextlib.suppress(Exception):  # the coordinator may be gone too
        for report in _left(client):
            if report["process"] != process and report["how"] != "finished":
                return _stop_from(report, "")
    return None


def agree(point: str, facts: Mapping[str, str]) -> None:
    """Wait until every process of the run has reached `point` (a name unique within the
    command, such as "the start of training"), each publishing `facts` (name -> value).

    Raises PeerFailed or Interrupted (as the other process said) when another process has
    left the command instead, and ConfigError naming the facts in which a process differs
    from process 0. Returns at once in a one-process run.
    """
    reached = _gather(point, dict(facts))
    if reached:
        _check_same(reached)


def process_0s(point: str, value: Any) -> Any:
    """Process 0's `value` (a JSON value) at `point`, returned in every process once each has
    reached it, as `agree` waits: for a verdict that is process 0's to give, such as whether
    the run in its --out is done. A process's own `value` in a one-process run."""
    reached = _gather(point, {"value": value})
    return reached[0]["value"] if reached else value


def go_on(point: str, signum: int | None) -> None:
    """Wait until every process of the run has reached `point`, as `agree` does, each saying
    whether a signal (`signum`, held back until now) asks it to stop; if any does, raise
    Interrupted in every process, as the first such process's signal. So all stop together,
    at the same point, and none waits in a collective for one that left.
    """
    reached = _gather(point, {"signal": signum})
    for process, said in sorted(reached.items()):
        if said["signal"] is not None:
            mine = process == _process()[0]
            report = None if mine else {"process": process, "how": "interrupted",
                                        "signum": said["signal"]}  # fmt: skip
            raise Interrupted(said["signal"], process=None if mine else process, report=report)
    if signum is not None and not reached:  # one process: its own signal
        raise Interrupted(signum)


def _gather(point: str, said: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """Publish what this process `said` at `point`, wait for every other process to do the
    same, and return it all by process id; raise as the first process that left instead
    says. {} in a one-process run."""
    client = _client()
    if client is None:
        return {}
    process, count = _process()
    client.key_value_set(f"{_AT}{point}/{process}", json.dumps(said))
    try:
        return _wait(client, point, process, count)
    except BaseException:  # (a second signal): it published the point but will not go on
        with contextlib.suppress(Exception):
            client.key_value_set(f"{_GAVE_UP}{point}/{process}", "")
        raise


def _wait(client: Any, point: str, process: int, count: int) -> dict[int, dict[str, Any]]:
    """`_gather`'s wait for every process's word at `point`, by process id."""
    reached: dict[int, dict[str, Any]] = {}
    poll, started, noted = _FIRST_POLL_SECONDS, time.monotonic(), False
    while True:
        # Read in the order they are written: a process publishes the point, then (if it gives
        # up waiting there) its gave-up key, then its report as it leaves. So one that left
        # after reaching the point is found at the point, not taken for one that never came.
        left = _left(client)
        gave_up = {int(key.rsplit("/", 1)[1]) for key, _ in
                   client.key_value_dir_get(f"{_GAVE_UP}{point}/")} - {process}  # fmt: skip
        for key, text in client.key_value_dir_get(f"{_AT}{point}/"):
            reached[int(key.rsplit("/", 1)[1])] = json.loads(text)
        for report in left:
            if report["process"] not in reached or report["process"] in gave_up:
                raise _stop_from(report, point)
        if len(reached) == count and not gave_up:
            return reached
        if not noted and time.monotonic() - started > WAIT_NOTE_SECONDS:
            missing = ", ".join(str(other) for other in range(count) if other not in reached)
            warnings.warn(f"still waiting for process {missing} to reach {point}", stacklevel=2)
            noted = True
        time.sleep(poll)
        poll = min(2 * poll, _LAST_POLL_SECONDS)


def _left(client: Any) -> list[dict[str, Any]]:
    """The reports of the processes that have left the command, by process id."""
    reports = [json.loads(text) for _, text in client.key_value_dir_get(_LEFT)]
    return sorted(reports, key=lambda report: report["process"])


def _check_same(reached: Mapping[int, Mapping[str, str]]) -> None:
    """ConfigError naming each fact in which a process differs from process 0."""
    want = reached[0]
    differences = []
    for name in want:
        values = {process: facts.get(name) for process, facts in sorted(reached.items())}
        others = [f"process {process}: {value}" for process, value in values.items()
                  if value != want[name]]  # fmt: skip
        if others:
            differences.append(f"{name} (process 0: {want[name]}; {'; '.join(others)})")
    if differences:
        raise ConfigError(
            f"the processes differ in {', '.join(differences)}; start every process with the "
            "same flags, data and checkpoint"
        )
