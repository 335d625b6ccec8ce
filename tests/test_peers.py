"""What the processes of a multi-process run tell each other (`jaxcifar.peers`), on a fake
coordination service: the real one is exercised by the two-process command-line tests in
tests/test_parallel.py."""

import json
import os
import signal
import time

import pytest

from jaxcifar import peers
from jaxcifar.errors import ConfigError, DataError
from jaxcifar.interrupt import Interrupted, StopOnSignal


class FakeStore:
    """The key-value calls `peers` makes, on a dict, as process `process` of `count`."""

    def __init__(self, count: int = 2):
        self.values: dict[str, str] = {}
        self.count = count

    def key_value_set(self, key, value):
        if key in self.values:
            raise RuntimeError(f"ALREADY_EXISTS: {key}")
        self.values[key] = value

    def key_value_dir_get(self, prefix):
        return [(key, value) for key, value in self.values.items() if key.startswith(prefix)]


@pytest.fixture
def store(monkeypatch):
    """Process 0 of two, joined to a fake coordination service; sleeping between polls ends
    the test (so a wait that would last for ever fails fast)."""
    fake = FakeStore()
    monkeypatch.setattr(peers, "_client", lambda: fake)
    monkeypatch.setattr(peers, "_process", lambda: (0, fake.count))

    def no_waiting(seconds):
        raise AssertionError("waited for a process that had already answered")

    monkeypatch.setattr(time, "sleep", no_waiting)
    return fake


def test_one_process_agrees_at_once():
    # No run joined (this test process never calls jax.distributed.initialize).
    peers.agree("the start of training", {"--epochs": "1"})
    peers.go_on("epoch 1 step 4", None)
    assert peers.process_0s("the check for a finished run", False) is False  # its own
    with pytest.raises(Interrupted):
        peers.go_on("epoch 1 step 4", signal.SIGTERM)


def test_processes_that_agree_go_on(store):
    store.values["jaxcifar/at/start/1"] = json.dumps({"--epochs": "1"})
    peers.agree("start", {"--epochs": "1"})
    assert store.values["jaxcifar/at/start/0"] == json.dumps({"--epochs": "1"})


def test_every_process_takes_process_0s_verdict(store, monkeypatch):
    store.values["jaxcifar/at/the check/1"] = json.dumps({"value": False})
    assert peers.process_0s("the check", True) is True  # process 0's, not process 1's
    monkeypatch.setattr(peers, "_process", lambda: (1, 2))
    store.values["jaxcifar/at/a check/0"] = json.dumps({"value": True})
    assert peers.process_0s("a check", False) is True


def test_a_slow_process_is_waited_for_with_one_note(store, monkeypatch):
    # Polls back off from 1 ms to 50 ms; after a minute one warning says what is awaited.
    slept, now = [], [0.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])

    def sleep(seconds):
        slept.append(seconds)
        now[0] += seconds
        if now[0] > 100:  # process 1 arrives, after 100 s decoding its data
            store.values["jaxcifar/at/start/1"] = json.dumps({})

    monkeypatch.setattr(time, "sleep", sleep)
    with pytest.warns(UserWarning) as noted:
        peers.agree("start", {})
    assert [str(warning.message) for warning in noted] == [
        "still waiting for process 1 to reach start"
    ]
    assert slept[:3] == [0.001, 0.002, 0.004] and max(slept) == 0.05


def test_differing_facts_are_named_with_each_processs_value(store):
    store.values["jaxcifar/at/start/1"] = json.dumps({"--epochs": "2", "--lr": "0.1"})
    with pytest.raises(ConfigError) as error:
        peers.agree("start", {"--epochs": "1", "--lr": "0.1"})
    assert str(error.value).startswith(
        "the processes differ in --epochs (process 0: 1; process 1: 2); start every process"
    )


@pytest.mark.parametrize(
    "report, raised, message",
    [
        ({"how": "failed", "message": "data dir x does not exist"}, peers.PeerFailed,
         "process 1 failed: data dir x does not exist"),
        ({"how": "interrupted", "signum": 15}, Interrupted, "process 1 was interrupted by SIGTERM"),
        ({"how": "finished"}, peers.PeerFailed, "process 1 ended the command before start;"),
    ],
)  # fmt: skip
def test_a_process_that_left_stops_the_others_with_its_reason(store, report, raised, message):
    store.values["jaxcifar/left/1"] = json.dumps({"process": 1, **report})
    with pytest.raises(raised) as error:
        peers.agree("start", {})
    assert str(error.value).startswith(message)


def test_a_signal_anywhere_stops_every_process_at_the_same_point(store):
    store.values["jaxcifar/at/epoch 2/1"] = json.dumps({"signal": signal.SIGINT})
    with pytest.raises(Interrupted) as error:
        peers.go_on("epoch 2", None)
    assert (str(error.value), error.value.exit_code) == ("process 1 was interrupted by SIGINT", 130)
    # Its own signal first: process 0 stops as interrupted itself, exit 143.
    store.values["jaxcifar/at/epoch 3/1"] = json.dumps({"signal": signal.SIGINT})
    with pytest.raises(Interrupted) as error:
        peers.go_on("epoch 3", signal.SIGTERM)
    assert (str(error.value), error.value.report) == ("interrupted by SIGTERM", None)


def test_leaving_publishes_how_and_passes_another_processs_report_on(store):
    with pytest.raises(DataError), peers.leaving():
        raise DataError("no images in x")
    assert json.loads(store.values["jaxcifar/left/0"]) == {
        "process": 0, "how": "failed", "message": "no images in x"
    }  # fmt: skip
    # Stopped by process 1's failure, process 0 reports process 1's, so that a third process
    # hears of the cause, not of process 0.
    store.values.clear()
    theirs = {"process": 1, "how": "failed", "message": "disk full"}
    with pytest.raises(peers.PeerFailed), peers.leaving():
        raise peers.PeerFailed("process 1 failed: disk full", theirs)
    assert json.loads(store.values["jaxcifar/left/0"]) == theirs
    store.values.clear()
    with peers.leaving():
        pass
    assert json.loads(store.values["jaxcifar/left/0"]) == {"process": 0, "how": "finished"}


def test_a_failed_collective_is_explained_by_the_process_that_left(store):
    assert peers.peer_stop() is None
    store.values["jaxcifar/left/0"] = json.dumps({"process": 0, "how": "failed", "message": "x"})
    assert peers.peer_stop() is None  # its own report is no other process's
    store.values["jaxcifar/left/1"] = json.dumps({"process": 1, "how": "interrupted", "signum": 2})
    assert str(peers.peer_stop()) == "process 1 was interrupted by SIGINT"


def test_a_deferred_signal_waits_to_be_taken_and_a_second_one_raises():
    with StopOnSignal() as signals:
        with signals.defer():
            os.kill(os.getpid(), signal.SIGTERM)
            with signals.hold():  # a held block's end does not raise a deferred signal
                pass
            assert signals.take_pending() == signal.SIGTERM
            assert signals.take_pending() is None
            os.kill(os.getpid(), signal.SIGINT)
            with pytest.raises(Interrupted) as insisted:
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(5)  # never reached in full
            assert insisted.value.exit_code == 130
        with pytest.raises(Interrupted) as left_over:
            with signals.defer():
                os.kill(os.getpid(), signal.SIGTERM)
        assert left_over.value.exit_code == 143


def test_a_process_that_gives_up_waiting_at_a_point_stops_the_others_there(store):
    # Stopped by a second signal while it waited, process 1 had published the point: the
    # others went on without it, into a collective it would never join.
    store.values["jaxcifar/at/start/1"] = json.dumps({})
    store.values["jaxcifar/gave-up/start/1"] = ""
    store.values["jaxcifar/left/1"] = json.dumps({"process": 1, "how": "interrupted", "signum": 2})
    with pytest.raises(Interrupted) as error:
        peers.agree("start", {})
    assert str(error.value) == "process 1 was interrupted by SIGINT"


def test_a_process_that_reaches_a_point_and_leaves_between_two_reads_counts_as_reached(
    store, monkeypatch
):
    # Process 1 publishes the point and finishes while process 0 reads: read in the other
    # order, that once failed a finished run ("process 1 ended the command before ...").
    read = store.key_value_dir_get

    def racing_read(prefix):
        seen = read(prefix)
        if prefix.startswith("jaxcifar/at/") and "jaxcifar/left/1" not in store.values:
            store.values["jaxcifar/at/end/1"] = json.dumps({"signal": None})
            store.values["jaxcifar/left/1"] = json.dumps({"process": 1, "how": "finished"})
        return seen

    monkeypatch.setattr(store, "key_value_dir_get", racing_read)
    monkeypatch.setattr(time, "sleep", lambda seconds: None)
    peers.go_on("end", None)  # goes on
