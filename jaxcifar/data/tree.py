"""A dataset copy's files, read from a folder or a tar archive into one in-memory shape.

Every reader (IDX, CIFAR-10 python/binary batches, image folders) takes a `Tree`, so
each format is parsed by one function whether it arrived unpacked or as a tarball.
Hidden files and folders (names starting with ".") are left out of every `Tree` and every
folder's fingerprint: tools leave them beside data (`.DS_Store`, `.ipynb_checkpoints/`,
macOS tar's `._*` copies of each file's metadata), and no dataset file is named so.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import posixpath
import tarfile
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path

from jaxcifar.data.dataset import SPLITS
from jaxcifar.errors import DataError, cannot_read
from jaxcifar.files import read_regular_file

ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz")
_GZIP_MAGIC = b"\x1f\x8b"
_CHUNK = 1 << 20


@dataclasses.dataclass(frozen=True)
class Tree:
    """Files under one root, by relative POSIX path ("train/cat/0001.jpg").

    Attributes:
      where: the folder or archive the files came from, for messages and `Dataset.source`.
      files: relative path -> the file's bytes; none hidden (see `is_hidden`).
      folders: relative paths of every folder, empty ones included (an empty class
        folder is an error the image-folder reader must be able to see); none hidden.
      prefix: the single top-level folder stripped from an archive's member names.
    """

    where: str
    files: dict[str, bytes]
    folders: frozenset[str]
    prefix: str = ""

    def describe(self, path: str) -> str:
        """Name `path` as the user sees it: the folder or archive, then the member."""
        return f"{self.where}/{self.prefix}{path}"

    def top_names(self) -> set[str]:
        """The names of the entries directly under the root."""
        return {path.split("/", 1)[0] for path in (*self.files, *self.folders)}


def is_archive(path: Path) -> bool:
    """Whether `path` is named like a tar archive we can read."""
    return path.name.lower().endswith(ARCHIVE_SUFFIXES)


def is_hidden(path: str) -> bool:
    """Whether any part of a relative POSIX path starts with "." ("train/.ipynb_checkpoints")."""
    return any(part.startswith(".") for part in path.split("/"))


def walk(root: Path, names: Iterable[str]) -> tuple[list[Path], list[Path]]:
    """The files and the folders among `root`'s entries `names`, recursively, sorted;
    hidden files and folders below them (and all a hidden folder holds) are left out.

    Symlinked folders are followed (a class folder may link to images kept elsewhere);
    a folder that cannot be listed, or a link back to a folder being walked, raises
    DataError rather than being skipped or walked forever.
    """
    files: list[Path] = []
    folders: list[Path] = []
    for name in sorted(names):
        path = root / name
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            seen: set[str] = set()
            for folder, subfolders, folder_files in os.walk(
                path, onerror=_unreadable_folder, followlinks=True
            ):
                real = os.path.realpath(folder)
                if real in seen:
                    raise DataError(
                        f"{folder}: {real} reached twice (a symbolic link loop, or two links "
                        "to one folder)"
                    )
                seen.add(real)
                # Pruned in place, so os.walk never enters a hidden folder.
                subfolders[:] = sorted(sub for sub in subfolders if not is_hidden(sub))
                folders.append(Path(folder))
                files.extend(
                    Path(folder) / file for file in sorted(folder_files) if not is_hidden(file)
                )
    return files, folders


def _unreadable_folder(error: OSError) -> None:
    """os.walk's onerror: by default it skips a folder it cannot list, losing a class."""
    raise DataError(cannot_read(error.filename, error)) from None


def read_folder(root: Path, names: Iterable[str]) -> Tree:
    """Read the entries `names` of folder `root` (files, and folders recursively)."""
    paths, folders = walk(root, names)
    files: dict[str, bytes] = {}
    for path in paths:
        try:
            files[path.relative_to(root).as_posix()] = read_regular_file(path)
        except OSError as error:
            raise DataError(cannot_read(path, error)) from None
    return Tree(str(root), files, frozenset(f.relative_to(root).as_posix() for f in folders))


def read_tar(path: Path) -> Tree:
    """Read every regular file of a (possibly gzipped) tar archive, but hidden ones, in one
    sequential pass; a hard or symbolic link reads as the file it links to.

    Nothing is extracted to disk, so member names cannot escape anywhere. When all members
    sit under one top-level folder (e.g. `cifar-10-batches-py/`), it is stripped, so
    readers see the same layout as in an unpacked folder; a top-level `train/` or `test/`
    is the layout itself and is kept.
    """
    files: dict[str, bytes] = {}
    folders: set[str] = set()
    links: dict[str, str] = {}  # a hard or symbolic link's name -> the name of its target
    try:
        with open(path, "rb") as raw:
            gzipped = raw.read(2) == _GZIP_MAGIC
            raw.seek(0)
            stream = gzip.GzipFile(fileobj=raw) if gzipped else raw
            # "r|": a stream, read front to back once, never seeking back into the gzip.
            with tarfile.open(fileobj=stream, mode="r|") as archive:
                for member in archive:
                    name = _normalize(member.name)
                    if not name or _hidden_below_top(name):
                        continue
                    if member.isdir():
                        folders.add(name)
                    elif member.isfile():
                        extracted = archive.extractfile(member)
                        assert extracted is not None  # a regular file always has data
                        files[name] = extracted.read()
                        links.pop(name, None)  # a later member of a name replaces an earlier
                    elif member.islnk() or member.issym():
                        links[name] = _link_target(member)
                        files.pop(name, None)
            # Read on to the end, so gzip checks its CRC and length trailer: tar stops at
            # its end marker, and a download cut short just after it would pass unnoticed.
            while stream.read(_CHUNK):
                pass
    except (tarfile.TarError, EOFError, zlib.error, OSError) as error:
        raise DataError(f"{path}: not a readable tar archive ({error})") from None
    files.update(_resolve_links(path, links, files))
    # Parents of files count as folders even when the archive lists no entry for them.
    folders.update(parent for name in files for parent in _parents(name))
    tops = {name.split("/", 1)[0] for name in (*files, *folders)}
    # Hidden names beside the top folder (macOS tar's `._data` beside `data/`) do not make a
    # second top; a hidden top folder alone (`tar czf data.tgz .mydata`) is the data.
    tops = {top for top in tops if not is_hidden(top)} or tops
    prefix = ""
    if len(tops) == 1 and (top := tops.pop()) in folders and top not in SPLITS:
        prefix = top + "/"
        files = {
            name[len(prefix) :]: data for name, data in files.items() if name.startswith(prefix)
        }
        folders = {name[len(prefix) :] for name in folders if name.startswith(prefix)}
    return Tree(
        str(path),
        {name: data for name, data in files.items() if not is_hidden(name)},
        frozenset(name for name in folders if not is_hidden(name)),
        prefix=prefix,
    )


def _link_target(member: tarfile.TarInfo) -> str:
    """The archive name a link member points at: a hard link's is a member name already, a
    symbolic link's is relative to the link's folder."""
    if member.islnk():
        return _normalize(member.linkname)
    if member.linkname.startswith("/"):
        return member.linkname  # outside the archive: no member matches it
    return _normalize(posixpath.join(posixpath.dirname(member.name), member.linkname))


def _resolve_links(path: Path, links: dict[str, str], files: dict[str, bytes]) -> dict[str, bytes]:
    """Each link's name -> its target file's bytes, following links to links, so an archive
    reads as the folder it unpacks to (GNU tar stores a second name of one file as a hard
    link). A link to no file of the archive (a folder, a path outside it, a loop, a hidden
    file, which is not read) raises DataError naming the link."""
    resolved = {}
    for name, first in links.items():
        target, seen = first, {name}
        while target in links and target not in seen:
            seen.add(target)
            target = links[target]
        if target in files:
            resolved[name] = files[target]
            continue
        if target in seen:
            why = f"{first}, one of a loop of links"
        elif _hidden_below_top(target):
            why = f"{target}, a hidden file, which archives are read without"
        else:
            why = f"{target}, which is no file in the archive"
        raise DataError(f"{path}: member {name} links to {why}")
    return resolved


def _hidden_below_top(name: str) -> bool:
    """Whether archive member `name` is hidden below its top folder, which `read_tar` does not
    read. Below the top only, for now: the top folder may be hidden and stripped (`tar czf
    data.tgz .mydata`); what is left is filtered once the top is known."""
    return is_hidden(name.partition("/")[2])


def _normalize(name: str) -> str:
    """A member name without "./" or slashes around it ("./train/" -> "train"); "" for the root."""
    name = posixpath.normpath(name).strip("/")
    return "" if name == "." else name


def _parents(name: str) -> Iterator[str]:
    """"a/b/c.jpg" -> "a", "a/b"."""
    parts = name.split("/")
    for end in range(1, len(parts)):
        yield "/".join(parts[:end])
