"""The decoded-array cache: one uncompressed `.npz` per dataset copy, holding every split.

Decoding the 60,000 CIFAR-10 JPEGs takes seconds to tens of seconds (5 s on one machine,
23-39 s on an older one); reading the same arrays back from an uncompressed `.npz` takes a
fraction of one. The file name carries a digest of the source, so a changed source gets a
new entry and a stale one is never read.
"""

from __future__ import annotations

import hashlib
import os
import re
import warnings
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from jaxcifar.atomic import atomic_path
from jaxcifar.data.dataset import Dataset
from jaxcifar.errors import DataError, cannot_read

CACHE_ENV = "JAXCIFAR_CACHE"
# Part of every digest: bump it when a reader's output changes, and old entries go unused.
# 2: sources that look like another dataset than the one asked for are refused (see
# sources.locate, image_folder.read); entries decoded from them under the wrong name
# (CIFAR-10 as fashion_mnist, Fashion-MNIST as mnist) must not be served.
# 3: image folders read .bmp, .gif, .webp and .tif(f) images too, turned upright as their
# EXIF Orientation tags say, their class folder names in Unicode NFC.
# 4: each split's `Dataset.notes` (an image folder's skipped files) are stored, to be warned
# of on every load, not only the one that decoded the source.
# 5: image-folder trees of one class are refused (an entry of one would train to "100%").
FORMAT = b"jaxcifar-cache-5"
_CHUNK = 1 << 20
# Stands for the source's path in a stored note (no path holds a NUL): the entry serves every
# copy of the same data, and a note must name the copy being read, not the first one decoded.
_SOURCE = "\0"


def cache_dir() -> Path:
    """$JAXCIFAR_CACHE, else ~/.cache/jaxcifar."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "jaxcifar").expanduser()


def file_digest(path: Path) -> str:
    """sha256 of a file's contents (an archive: ~20 ms per 20 MB)."""
    digest = hashlib.sha256(FORMAT)
    try:
        with open(path, "rb") as file:
            while chunk := file.read(_CHUNK):
                digest.update(chunk)
    except OSError as error:
        raise DataError(cannot_read(path, error)) from None
    return digest.hexdigest()


def folder_digest(root: Path, files: Iterable[Path], *, inodes: bool = False) -> str:
    """sha256 of each file's relative path (its bytes, whatever their encoding), size, mtime
    and, with `inodes`, inode number; not its contents.

    A folder is fingerprinted on every load and may hold 60,000 small files: opening them
    all would cost seconds, a stat costs microseconds, and any rewrite, addition or
    removal changes a size, an mtime or the path list. Where the paths hold the labels (an
    image-folder tree's class folders), two class folders swapped by name change none of
    those where their files share names, sizes and mtimes (fixed-size BMPs unpacked from one
    archive), and were served the old labels: `inodes` follows the files. It costs a decode
    of every copy of such a tree, and of each mount of a file system whose inode numbers
    change (some FUSE mounts), with an entry each in the cache.

    Raises DataError naming a file it cannot stat.
    """
    digest = hashlib.sha256(FORMAT)
    for path in files:
        try:
            stat = path.stat()
        except OSError as error:  # a dangling symbolic link, a file removed since the walk
            raise DataError(cannot_read(path, error)) from None
        # fsencode: a name that is not UTF-8 (b"chat_\xe9") is a str with surrogates, which
        # a plain encode() refuses; valid names give the same bytes either way.
        name = os.fsencode(path.relative_to(root).as_posix())
        identity = f"\0{stat.st_ino}" if inodes else ""
        digest.update(name + f"\0{stat.st_size}\0{stat.st_mtime_ns}{identity}\n".encode())
    return digest.hexdigest()


def entry_path(name: str, digest: str) -> Path:
    """Where the arrays of dataset `name` decoded from the source with `digest` live."""
    return cache_dir() / f"{name}-{digest}.npz"


def read_split(path: Path, split: str, source: str) -> Dataset | None:
    """One split from a cache entry; None when there is none or it is unreadable or corrupt.

    A corrupt entry (a crash can't leave one, since entries are written atomically, but a
    disk or a user can) is not an error: the caller decodes the source again and rewrites it.
    """
    if not path.is_file():
        return None
    try:
        # Opened here, not by np.load, which leaves its file open when the zip is corrupt.
        with open(path, "rb") as file, np.load(file) as entry:
            return Dataset(
                entry[f"{split}_images"],
                entry[f"{split}_labels"],
                tuple(str(name) for name in entry["class_names"]),
                source=source,
                notes=tuple(str(n).replace(_SOURCE, source) for n in entry[f"{split}_notes"]),
            )
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, DataError):
        return None


def write(path: Path, splits: Mapping[str, Dataset]) -> bool:
    """Store every split of one source; whether it was stored. A cache that can't be written
    only costs speed, and is warned of."""
    arrays = {"class_names": np.array(next(iter(splits.values())).class_names)}
    for split, dataset in splits.items():
        arrays[f"{split}_images"] = dataset.images
        arrays[f"{split}_labels"] = dataset.labels
        # Only where a path starts (the note's start, or after a space): "d" is in "skipped".
        at_path = re.compile(rf"(?:^|(?<= )){re.escape(dataset.source)}(?=/)")
        notes = [at_path.sub(_SOURCE, note) for note in dataset.notes]
        arrays[f"{split}_notes"] = np.array(notes, dtype=str)
    try:
        with atomic_path(path) as tmp:
            np.savez(tmp, **arrays)
    except OSError as error:
        # Making the folder where a file is: "File exists", which misleads.
        reason = (f"{error.filename} is a file, not a folder" if isinstance(error, FileExistsError)
                  else error.strerror or str(error))  # fmt: skip
        warnings.warn(
            f"could not write the dataset cache {path} ({reason}; ${CACHE_ENV} names its "
            "folder): the data is decoded again on every load",
            stacklevel=2,
        )
        return False
    return True
