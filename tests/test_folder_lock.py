"""One command at a time writes an output folder: `jaxcifar.folder_lock`."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jaxcifar import folder_lock
from jaxcifar.cli import main
from jaxcifar.errors import ConfigError
from data_files import write_idx_set

pytestmark = pytest.mark.skipif(folder_lock.fcntl is None, reason="no flock on this OS")


def held_message(out, flag="--out") -> str:
    return (f"{flag} {out}: another jaxcifar command is writing there (it holds the folder's "
            f"lock); wait for it to end, or pass another {flag}")  # fmt: skip


def test_a_second_holder_is_refused_until_the_first_lets_go(tmp_path):
    out = tmp_path / "run"
    with folder_lock.holding(out):
        with pytest.raises(ConfigError) as refused, folder_lock.holding(out, "--dir"):
            pass
        assert str(refused.value) == held_message(out, "--dir")
        (out / "metrics.json").write_text("{}")
    with folder_lock.holding(out):  # released with the block
        pass
    assert (out / "metrics.json").read_text() == "{}"  # a folder written into stays


def test_a_folder_made_for_the_block_goes_again_when_nothing_was_written(tmp_path):
    out = tmp_path / "runs" / "new" / "run"
    with folder_lock.holding(out):
        assert out.is_dir()
    assert list(tmp_path.iterdir()) == []  # its parents made with it too
    with pytest.raises(RuntimeError), folder_lock.holding(out):
        raise RuntimeError  # a command that failed before writing
    assert list(tmp_path.iterdir()) == []
    with folder_lock.holding(tmp_path / "x" / ".." / "y"):  # makes x and y, neither x/..
        assert (tmp_path / "y").is_dir()
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "runs").mkdir()
    with folder_lock.holding(out):
        (out / "checkpoint.msgpack").write_bytes(b"")
    assert (out / "checkpoint.msgpack").exists()


def test_an_empty_folder_goes_before_its_lock_is_let_go(tmp_path, monkeypatch):
    # Once let go first: a second command could lock the folder just before the first
    # removed it, then write into a folder made again, unlocked, beside a third command.
    out, refused = tmp_path / "run", []
    rmdir = Path.rmdir

    def rmdir_with_a_command_arriving(path):
        with pytest.raises(ConfigError) as caught, folder_lock.holding(out):
            pass
        refused.append(caught.value)
        rmdir(path)

    monkeypatch.setattr(Path, "rmdir", rmdir_with_a_command_arriving)
    with folder_lock.holding(out):
        pass
    assert len(refused) == 1 and not out.exists()


def test_a_folder_removed_between_its_open_and_its_lock_is_made_again_and_locked(
    tmp_path, monkeypatch
):
    # As when another command, ending, removes the empty folder it made: the lock would be
    # on a folder no longer there.
    out = tmp_path / "run"
    out.mkdir()
    lock, removals = folder_lock._lock, []

    def lock_once_removed(fd, folder, flag):
        if not removals:
            removals.append(folder)
            folder.rmdir()
        return lock(fd, folder, flag)

    monkeypatch.setattr(folder_lock, "_lock", lock_once_removed)
    with folder_lock.holding(out):
        assert out.is_dir()
        with pytest.raises(ConfigError), folder_lock.holding(out):  # the folder there now
            pass
    assert removals == [out] and not out.exists()  # made here the second time, so removed


def test_a_path_that_cannot_be_a_folder_is_left_to_the_commands_checks(tmp_path):
    (tmp_path / "file").write_text("")
    for out in (tmp_path / "file", tmp_path / "file" / "run"):
        with folder_lock.holding(out), folder_lock.holding(out):  # not made, not locked
            pass
    assert sorted(path.name for path in tmp_path.iterdir()) == ["file"]


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    out = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; "
         "from jaxcifar import folder_lock\nwith folder_lock.holding(Path(sys.argv[1])):\n"
         "    print('held', flush=True); time.sleep(60)", str(out)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(ConfigError), folder_lock.holding(out):
            pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with folder_lock.holding(out):  # the OS let go of it with the process
        pass


def test_a_command_stopped_by_sigterm_before_its_first_write_removes_the_folder_it_made(
    tmp_path,
):
    # SIGTERM killed scratch, bench and evaluate outright, leaving the empty --out (and its
    # parents) that the lock had made; now it unwinds them as Ctrl-C does, exit 143.
    write_idx_set(tmp_path / "mnist", n_train=2000, n_test=10, shape=(28, 28))
    out = tmp_path / "runs" / "new"
    command = [sys.executable, "-m", "jaxcifar", "scratch", "--dataset", "mnist",
               "--data-dir", str(tmp_path / "mnist"), "--epochs", "100000", "--out", str(out)]
    scratch = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not out.exists() and scratch.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert out.is_dir()  # the lock is held: training (of 100,000 epochs) lies ahead
        scratch.send_signal(signal.SIGTERM)
        assert scratch.wait(timeout=60) == 143
    finally:
        scratch.kill()
    assert scratch.stderr.read() == "jaxcifar scratch: interrupted by SIGTERM\n"
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    "argv",
    [["train"], ["train", "--resume"], ["speedrun"], ["scratch"], ["bench"],
     ["evaluate", "--checkpoint", "{tmp}/nothing"]],  # fmt: skip
)
def test_every_command_that_writes_a_folder_refuses_one_held_by_another(argv, tmp_path, capsys):
    # Refused before its data is read (there is none at --data-dir) or a checkpoint loaded.
    out = tmp_path / "run"
    argv = [word.replace("{tmp}", str(tmp_path)) for word in argv] + ["--out", str(out)]
    if argv[0] != "bench":
        argv += ["--data-dir", str(tmp_path / "nowhere")]
    with folder_lock.holding(out):
        code = main(argv)
    assert code == 2
    assert capsys.readouterr().err == f"jaxcifar {argv[0]}: error: {held_message(out)}\n"


def test_train_is_refused_before_it_starts_a_backend(tmp_path):
    # On a GPU a backend's start takes seconds and memory, beside the run writing there.
    out = tmp_path / "run"
    script = (
        "import sys; from pathlib import Path; from jax._src import xla_bridge\n"
        "from jaxcifar import folder_lock; from jaxcifar.cli import main\n"
        "with folder_lock.holding(Path(sys.argv[1])):\n"
        "    code = main(['train', '--out', sys.argv[1]])\n"
        "print(code, xla_bridge.backends_are_initialized())"
    )
    result = subprocess.run([sys.executable, "-c", script, str(out)], capture_output=True,
                            text=True, timeout=120)  # fmt: skip
    assert result.stderr == f"jaxcifar train: error: {held_message(out)}\n"
    assert result.stdout == "2 False\n"  # exit status 2; no backend started
