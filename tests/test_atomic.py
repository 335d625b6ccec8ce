import errno

import pytest

from jaxcifar.atomic import atomic_path, atomic_write_text


def test_atomic_write_replaces_whole_file(tmp_path):
    target = tmp_path / "out" / "metrics.json"
    atomic_write_text(target, "old")
    atomic_write_text(target, "new")
    assert target.read_text() == "new"
    assert [p.name for p in target.parent.iterdir()] == ["metrics.json"]


def test_failed_write_leaves_old_file_and_no_temporaries(tmp_path):
    target = tmp_path / "checkpoint.msgpack"
    target.write_text("complete")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed mid-write")
    assert target.read_text() == "complete"
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.msgpack"]


@pytest.mark.parametrize("named", [False, True])
def test_a_failed_write_names_the_target_not_a_temporary(tmp_path, named):
    target = tmp_path / "metrics.json"
    with pytest.raises(OSError) as caught:
        with atomic_path(target) as tmp:
            # A full disk, as write() reports it (no file name) or open() (the temporary's).
            raise OSError(errno.ENOSPC, "No space left on device", *([str(tmp)] if named else []))
    assert caught.value.filename == str(target)
    assert list(tmp_path.iterdir()) == []


def test_a_failed_rename_names_the_target_once(tmp_path):
    # A directory where the file goes: the rename fails naming the temporary and the target,
    # and the error line once read "Is a directory: PATH: PATH".
    target = tmp_path / "checkpoint.msgpack"
    target.mkdir()
    with pytest.raises(IsADirectoryError) as caught:
        with atomic_path(target) as tmp:
            tmp.write_text("complete")
    assert (caught.value.filename, caught.value.filename2) == (str(target), None)
    assert [path.name for path in tmp_path.iterdir()] == ["checkpoint.msgpack"]


def test_temporary_keeps_suffix_for_format_sniffing_writers(tmp_path):
    with atomic_path(tmp_path / "figure.png") as tmp:
        assert tmp.suffix == ".png"
        tmp.write_bytes(b"x")
    assert [path.name for path in tmp_path.iterdir()] == ["figure.png"]  # renamed, none left
    assert (tmp_path / "figure.png").read_bytes() == b"x"


def test_written_file_gets_default_permissions_not_mkstemps_0600(tmp_path):
    import os

    umask = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "report.json", "{}")
    finally:
        os.umask(umask)
    assert (tmp_path / "report.json").stat().st_mode & 0o777 == 0o644


def test_a_write_removes_temporaries_left_by_dead_writers_on_this_host_only(tmp_path):
    import os
    import socket
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    dead_pid = int(dead.stdout)
    host = socket.gethostname()
    left = {
        "dead": tmp_path / f".checkpoint.msgpack.{host}-{dead_pid}.ab12cd34.tmp.msgpack",
        "alive": tmp_path / f".checkpoint.msgpack.{host}-{os.getpid()}.ef56gh78.tmp.msgpack",
        "other host": tmp_path / f".checkpoint.msgpack.elsewhere-{dead_pid}.ij90kl12.tmp.msgpack",
        "other file": tmp_path / f".metrics.json.{host}-{dead_pid}.mn34op56.tmp.json",
    }
    for path in left.values():
        path.write_bytes(b"half a checkpoint")
    atomic_write_text(tmp_path / "checkpoint.msgpack", "new")
    assert not left["dead"].exists()
    assert all(left[name].exists() for name in ("alive", "other host", "other file"))
    assert (tmp_path / "checkpoint.msgpack").read_text() == "new"


def test_the_file_reaches_the_disk_before_its_rename(tmp_path, monkeypatch):
    # Renamed before its data is on disk, a file can be empty after a power cut.
    import os

    events, fsync, replace = [], os.fsync, os.replace

    def recorded_fsync(fd):
        events.append(("fsync", os.fstat(fd).st_ino))
        fsync(fd)

    def recorded_replace(src, dst):
        events.append(("replace", os.stat(src).st_ino))
        replace(src, dst)

    monkeypatch.setattr(os, "fsync", recorded_fsync)
    monkeypatch.setattr(os, "replace", recorded_replace)
    atomic_write_text(tmp_path / "metrics.json", "{}")
    inode = (tmp_path / "metrics.json").stat().st_ino
    assert events == [("fsync", inode), ("replace", inode)]


def test_a_temporary_of_another_users_live_process_is_kept(tmp_path, monkeypatch):
    import os
    import socket

    other = tmp_path / f".checkpoint.msgpack.{socket.gethostname()}-4242.ab12cd34.tmp.msgpack"
    other.write_bytes(b"being written")
    kill = os.kill

    def another_users(pid, signum):  # what os.kill says of a process we may not signal
        if pid == 4242:
            raise PermissionError(1, "Operation not permitted")
        return kill(pid, signum)

    monkeypatch.setattr(os, "kill", another_users)
    atomic_write_text(tmp_path / "checkpoint.msgpack", "new")
    assert other.read_bytes() == b"being written"


def test_text_is_written_as_utf8(tmp_path):
    # Class names come from folder names: "café" must read back under any locale.
    atomic_write_text(tmp_path / "metrics.json", '{"class": "café ☕"}')
    assert (tmp_path / "metrics.json").read_bytes().decode("utf-8") == '{"class": "café ☕"}'


def test_a_name_near_the_file_systems_limit_is_written_and_its_dead_temporaries_removed(tmp_path):
    # The temporary's name adds the host, a process id and more to the target's: a 250-byte
    # name is legal, its temporary's would not be (255 bytes on most file systems).
    import os
    import subprocess
    import sys

    from jaxcifar.atomic import _owner

    long_names = ["é" * 121 + "-ab.json", "é" * 121 + "-cd.json"]  # 250 bytes each, in UTF-8
    assert all(len(os.fsencode(name)) == 250 for name in long_names)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    left = {
        name: tmp_path / f"{_owner(tmp_path / name)}{int(dead.stdout)}.ab12cd34.tmp.json"
        for name in long_names
    }
    for path in left.values():
        path.write_bytes(b"half a report")
    atomic_write_text(tmp_path / long_names[0], "new")
    assert (tmp_path / long_names[0]).read_text() == "new"
    assert not left[long_names[0]].exists()
    assert left[long_names[1]].exists()  # the same first 243 bytes: another file's


def test_a_temporarys_name_fits_with_the_longest_process_id(tmp_path, monkeypatch):
    import os
    from pathlib import Path

    from jaxcifar.atomic import _owner

    for name_max in (255, 143):  # ext4's; eCryptfs's, reported by pathconf of the folder only
        monkeypatch.setattr(os, "pathconf", lambda path, key, limit=name_max: (
            limit if Path(path) == tmp_path else 255))  # fmt: skip
        for size in (100, 143, 200, 250):
            name = "é" * ((size - 5) // 2) + "x" * ((size - 5) % 2) + ".json"
            worst = f"{_owner(tmp_path / name)}{'9' * 7}.abcdefgh.tmp.json"
            assert len(os.fsencode(worst)) <= name_max, (name_max, size)


def test_a_long_name_with_a_suffix_outside_ascii_is_written(tmp_path):
    # The room kept for the temporary's suffix was counted in characters, not bytes.
    name = "x" * 220 + ".éééé"  # 229 bytes
    atomic_write_text(tmp_path / name, "new")
    assert [path.name for path in tmp_path.iterdir()] == [name]


def test_a_link_into_a_folder_that_does_not_exist_is_not_written_through(tmp_path):
    # The link's target's missing folders were made, wherever it pointed (/nonexist/ at the
    # file system's root); open() makes no folder, and fails.
    link = tmp_path / "link.png"
    link.symlink_to(tmp_path / "nowhere" / "deep" / "grid.png")
    with pytest.raises(FileNotFoundError) as refused:
        atomic_write_text(link, "text")
    assert (refused.value.strerror, refused.value.filename) == (
        "No such file or directory", str(link)
    )
    assert sorted(path.name for path in tmp_path.iterdir()) == ["link.png"]


def test_a_symbolic_link_is_written_through_not_replaced(tmp_path):
    # `data show --out link.png` replaced the user's link with a file of its own.
    (tmp_path / "real").mkdir()
    target, link = tmp_path / "real" / "grid.png", tmp_path / "link.png"
    link.symlink_to(target)  # dangling: open() would make the target, and so does this
    atomic_write_text(link, "first")
    atomic_write_text(link, "second")
    assert link.is_symlink() and target.read_text() == "second"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["link.png", "real"]
    assert [path.name for path in (tmp_path / "real").iterdir()] == ["grid.png"]
