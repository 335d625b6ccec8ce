"""Atomic file writes: a reader sees the old file or the new one, never half of one.

The temporary file is named `.<name>.<host>-<pid>.<random>.tmp<suffix>` beside the target
(`<name>` cut and hashed where the whole would be too long a file name).
A writer killed with SIGKILL cannot remove its own; the next write to the same target on the
same host removes those whose process is gone, so a crash leaves litter at most until then.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import json
import os
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success, fsync it and rename it onto `path`.

    Write the file to the yielded path (e.g. `np.savez`, `fig.savefig`). If the block
    raises, the temporary file is removed and `path` is left untouched. The temporary
    name keeps `path`'s suffix so libraries that pick a format by suffix still work. A
    symbolic link is written through, as `open` writes (to its target, even one still to be
    made, but in a folder that exists: FileNotFoundError naming `path` otherwise); replaced
    by the new file, the user's link was lost.
    """
    named = Path(path)
    target = link_target(named)
    if target is named:
        target.parent.mkdir(parents=True, exist_ok=True)
    owner = _owner(target)
    remove_dead_temporaries(target, owner)
    fd, tmp_name = tempfile.mkstemp(
        dir=target.parent, prefix=f"{owner}{os.getpid()}.", suffix=f".tmp{target.suffix}"
    )
    os.close(fd)
    tmp = Path(tmp_name)
    # mkstemp creates 0600; give the file the mode a plain open() would (0666 less umask).
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o666 & ~umask)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except OSError as error:
        # A failed write (a full disk) names no file, or the temporary, and a failed rename
        # the temporary and the target: name only the one the user asked for.
        if error.filename in (None, tmp_name):
            error.filename, error.filename2 = str(named), None
        raise
    finally:
        tmp.unlink(missing_ok=True)


def link_target(path: Path) -> Path:
    """The file that writing `path` writes, as `open` writes: a symbolic link's final target
    (through every link), else `path` itself.

    Raises OSError naming `path`, as `open` fails, where a link's target's folder is missing
    (FileNotFoundError) or is a file (NotADirectoryError): `open` makes no folder for it.
    """
    if not path.is_symlink():
        return path
    target = Path(os.path.realpath(path))
    if not target.parent.is_dir():
        code = errno.ENOTDIR if target.parent.exists() else errno.ENOENT
        raise OSError(code, os.strerror(code), str(path))
    return target


def _owner(target: Path) -> str:
    """`.<name>.<host>-`, the start of the names of `target`'s temporaries on this host.

    A temporary's name is longer than its target's, so a target whose name is legal can have a
    temporary's that is not (most file systems hold 255 bytes). A name that leaves too little
    room is cut, and a hash of the whole name keeps two long names' temporaries apart.
    """
    host = socket.gethostname()
    name = os.fsencode(target.name)
    # The rest of the name: dots, host, a process id of up to 7 digits, mkstemp's 8 letters.
    rest = os.fsencode(f"..{host}-1234567.abcdefgh.tmp{target.suffix}")
    room = name_max(target.parent) - len(rest)
    if len(name) > room:
        digest = hashlib.sha256(name).hexdigest()[:16].encode()
        name = name[: max(room - len(digest) - 1, 0)] + b"~" + digest
    return f".{os.fsdecode(name)}.{host}-"


def name_max(folder: str | os.PathLike[str]) -> int:
    """The longest file name, in bytes, that `folder`'s file system holds."""
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):  # no such limit reported (pathconf is POSIX only)
        return 255


def remove_dead_temporaries(target: Path, owner: str) -> None:
    """Delete the temporaries of `target` named `<owner><pid>.*` whose process has exited.

    Only this host's (`owner` holds the host name): a process id means nothing on another
    machine sharing the folder. A live process, or one of another user, keeps its file.
    """
    suffix = f".tmp{target.suffix}"
    for candidate in target.parent.glob(f"{glob.escape(owner)}*{glob.escape(suffix)}"):
        pid_text = candidate.name[len(owner) :].partition(".")[0]
        if pid_text.isdigit() and not _process_exists(int(pid_text)):
            candidate.unlink(missing_ok=True)


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write `data` to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json_and_markdown(path: str | os.PathLike[str], data: Any, markdown: str) -> list[Path]:
    """Write `data` as JSON to `path` and `markdown` beside it (the same name, .md), each
    atomically; return both paths. The results files of the benchmarks and measured runs."""
    json_path = Path(path)
    markdown_path = json_path.with_suffix(".md")
    atomic_write_text(json_path, json.dumps(data, indent=1) + "\n")
    atomic_write_text(markdown_path, markdown)
    return [json_path, markdown_path]
