"""One command at a time writes into an output folder (--out).

Two commands writing one folder at once (a run started twice, a resume in a second terminal
while the first still trains) would interleave their files: the checkpoint of one run beside
the metrics.json and figures of the other, or each overwriting the other's epochs. So a
command that writes a folder holds an exclusive lock on it while it runs, and a second one
is refused at once. The lock is `flock` on the folder itself: no lock file is left in it,
and the OS releases the lock when the process ends, however it ends, so a crash leaves no
stale lock to clear by hand.

A folder made for the command is removed again if the command leaves it empty, but not by
a command killed outright (kill -9; a SIGTERM to a command that does not catch it): that
leaves the empty folder. Where no lock can be taken (Windows, which has no `flock`; a file
system without locks, such as an NFS mount that refuses them on a folder), commands run
unguarded, as before.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from jaxcifar.errors import ConfigError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]


@contextlib.contextmanager
def holding(folder: Path, flag: str = "--out") -> Iterator[None]:
    """Hold `folder` (the value of `flag`) for this command's writes while the block runs.

    The folder (and its missing parents) is made if missing, and removed again on the way
    out if it is still empty then, so that a command failing before its first write leaves
    no empty folder. Best effort but for the one refusal: a folder that cannot be made or
    locked (a path through a file, a file system without locks) is left to the command's
    own checks and writes, which name the problem.

    Raises:
      ConfigError naming `flag` and `folder` when another process holds the folder.
    """
    if fcntl is None:
        yield
        return
    made, fd = _make_and_lock(folder, flag)
    try:
        yield
    finally:
        # Removed before the lock is let go: a command that opened the folder meanwhile then
        # locks a folder that is gone, which `_make_and_lock` sees, and makes it again.
        _remove_empty(made)
        if fd is not None:
            os.close(fd)  # releases the lock


def _make_and_lock(folder: Path, flag: str) -> tuple[list[Path], int | None]:
    """Make `folder` if missing and lock it: (the folders made, deepest first; the open,
    locked folder, or None where none can be locked)."""
    made: list[Path] = []
    # Another command's folder may go between this one's open and lock (the other removes
    # it as it ends, empty): the lock is then on a folder that is no longer there.
    for _ in range(3):
        made = _make(folder) or made
        try:
            # O_DIRECTORY: a file where the folder should be is not opened (nor locked).
            fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        except FileNotFoundError:
            continue  # gone since made: make it again
        except OSError:  # not a folder: the command's checks say so
            return made, None
        try:
            locked = _lock(fd, folder, flag)
        except BaseException:  # refused: the folder is the holder's, made or not
            os.close(fd)
            raise
        if not locked:
            os.close(fd)
            return made, None
        if _still_there(fd, folder):
            return made, fd
        os.close(fd)
    return made, None


def _make(folder: Path) -> list[Path]:
    """Make `folder` and its missing parents; those made, deepest first ([] when it was
    there already, or could not be made). A `..` in the path is not among them: removing
    `x/..` would remove x's parent, not x."""
    missing, path = [], folder
    while not os.path.lexists(path) and path != path.parent:
        if path.name not in (".", ".."):
            missing.append(path)
        path = path.parent
    if not missing:
        return []
    try:
        folder.mkdir(parents=True)
    except OSError:
        return []
    return missing


def _remove_empty(made: list[Path]) -> None:
    """Remove the folders `made` (deepest first) that are empty, up to the first that is not."""
    for path in made:
        try:
            path.rmdir()
        except OSError:  # not empty: it holds what the command wrote
            return


def _lock(fd: int, folder: Path, flag: str) -> bool:
    """Lock the open folder `fd` for this process alone: whether it could be locked at all;
    ConfigError if another process holds it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:  # EWOULDBLOCK: another open of the folder holds the lock
        raise ConfigError(
            f"{flag} {folder}: another jaxcifar command is writing there (it holds the "
            f"folder's lock); wait for it to end, or pass another {flag}"
        ) from None
    except OSError:  # ENOLCK, EOPNOTSUPP, EBADF (NFS wants a file open for writing)
        return False  # no locks here: unguarded
    return True


def _still_there(fd: int, folder: Path) -> bool:
    """Whether `folder` is still the folder open as `fd` (not removed, nor made again)."""
    try:
        here = os.stat(folder)
    except OSError:
        return False
    opened = os.fstat(fd)
    return (here.st_dev, here.st_ino) == (opened.st_dev, opened.st_ino)
