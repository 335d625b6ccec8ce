"""Reading a file a user named: regular files only."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path


def read_regular_file(path: str | os.PathLike[str]) -> bytes:
    """`path`'s bytes; OSError for what is not a regular file (IsADirectoryError for a folder):
    a device (`/dev/zero`) was read until memory ran out, and a FIFO without a writer blocks
    its reader for ever (opened without blocking here, so that it can be refused)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    with os.fdopen(fd, "rb") as file:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(Path(path)))
        if not stat.S_ISREG(mode):
            raise OSError(errno.EINVAL, "not a regular file", str(Path(path)))
        return file.read()
