"""Reading a file a user named: regular files only."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import BinaryIO


def open_regular_file(path: str | os.PathLike[str]) -> BinaryIO:
    """`path` opened for reading in binary; OSError for what is not a regular file
    (IsADirectoryError for a folder): a device (`/dev/zero`) was read until memory ran out,
    and a FIFO without a writer blocks its reader for ever (opened without blocking here, so
    that it can be refused; the flag does nothing to a regular file's reads)."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
    fd = os.open(path, flags)
    # Checked before the descriptor becomes a file object: os.fdopen refuses a folder's
    # itself, naming the descriptor's number, and leaves the descriptor open.
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(Path(path)))
        if not stat.S_ISREG(mode):
            raise OSError(errno.EINVAL, "not a regular file", str(Path(path)))
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, "rb")


def read_regular_file(path: str | os.PathLike[str]) -> bytes:
    """`path`'s bytes; `open_regular_file`'s OSError for what is not a regular file."""
    with open_regular_file(path) as file:
        return file.read()
