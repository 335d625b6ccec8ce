"""One command at a time writes an output folder: `jaxcifar.folder_lock`."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from jaxcifar import folder_lock
from jaxcifar.cli import main
from jaxcifar.errors import ConfigError

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
    (tmp_path / "runs").mkdir()
    with folder_lock.holding(out):
        (out / "checkpoint.msgpack").write_bytes(b"")
    assert (out / "checkpoint.msgpack").exists()


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
