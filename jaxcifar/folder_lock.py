"""One command at a time writes into an output folder (--out).

Two commands writing one folder at once (a run started twice, a resume in a second terminal
while the first still trains) would interleave their files: the checkpoint of one run beside
the metrics.json and figures of the other, or each overwriting the other's epochs. So a
command that writes a folder holds an exclusive lock on it while it runs, and a second one
is refused at once. The lock is `flock` on the folder itself: no lock file is left in it,
and the OS releases the lock when the process ends, however it ends, so a crash leaves no
stale lock to clear by hand.

Where no lock can be taken (Windows, which has no `flock`; a file system without locks,
such as an NFS mount that refuses them on a folder), commands run unguarded, as before.
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
    made = _make(folder) if fcntl is not None else []
    try:
        # O_DIRECTORY: a file where the folder should be is not opened (nor locked).
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY) if fcntl is not None else None
    except OSError:  # not a folder, or not there: the command's checks say so
        fd = None
    try:
        if fd is not None:
            _lock(fd, folder, flag)
        yield
    finally:
        if fd is not None:
            os.close(fd)  # releases the lock
        for path in made:  # deepest first; one not empty holds what the command wrote
            try:
                path.rmdir()
            except OSError:
                break


def _make(folder: Path) -> list[Path]:
    """Make `folder` and its missing parents; those made, deepest first ([] when it was
    there already, or could not be made)."""
    missing, path = [], folder
    while not os.path.lexists(path) and path != path.parent:
        missing.append(path)
        path = path.parent
    if not missing:
        return []
    try:
        folder.mkdir(parents=True)
    except OSError:
        return []
    return missing


def _lock(fd: int, folder: Path, flag: str) -> None:
    """Lock the open folder `fd` for this process alone, or raise ConfigError if another
    process holds it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:  # EWOULDBLOCK: another open of the folder holds the lock
        raise ConfigError(
            f"{flag} {folder}: another jaxcifar command is writing there (it holds the "
            f"folder's lock); wait for it to end, or pass another {flag}"
        ) from None
    except OSError:  # ENOLCK, EOPNOTSUPP, EBADF (NFS wants a file open for writing)
        pass  # no locks here: unguarded
