"""Where `load` finds a dataset: a local folder or archive, else its official release
(downloaded once, `jaxcifar.data.download`).

A data dir (the `data_dir` argument, else $JAXCIFAR_DATA_DIR) may be an archive, a folder
that holds a dataset's files, or a folder holding such a folder or archive named after the
dataset (`fashion-mnist/`, `cifar10-jpeg.tar.gz`, `cifar-10-batches-py/`, ...). Whatever
is found is decoded once and cached (`jaxcifar.data.cache`); later loads read the cache.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import warnings
from collections.abc import Callable
from pathlib import Path

from jaxcifar.data import cache, cifar, download, idx, image_folder, tree
from jaxcifar.data.dataset import CLASS_NAMES, SPLITS, Dataset, check_count
from jaxcifar.errors import ConfigError, DataError

DATA_DIR_ENV = "JAXCIFAR_DATA_DIR"

# The splits of the last source decoded where its cache entry could not be written, by that
# entry and the source's path: `train` loads both splits, and would otherwise decode the
# source (and warn of the cache) once for each. One source only, so a long-lived process
# holds no more than one load's arrays.
_UNCACHED: dict[tuple[Path, str], dict[str, Dataset]] = {}

# The names a dataset's folder or archive may start with, e.g. `fashion-mnist/`, followed by
# anything but a digit (`cifar-100-python/` is CIFAR-100's). No alias starts with another
# dataset's ("fashion_mnist" does not start with "mnist"), so a name names at most one dataset.
ALIASES = {
    "cifar10": ("cifar10", "cifar-10"),
    "mnist": ("mnist",),
    "fashion_mnist": ("fashion_mnist", "fashion-mnist"),
}


@dataclasses.dataclass(frozen=True)
class Format:
    """One on-disk layout of a dataset.

    Attributes:
      layout: what a user should provide, for the message when nothing is found.
      top_names: a folder (or archive) is in this layout when it has one of these entries.
      read: decode every split of a `Tree` in this layout.
      labels_in_paths: the labels are where the files are (an image-folder tree's class
        folders), not in them: a folder's cache key follows each file's identity too.
    """

    layout: str
    top_names: frozenset[str]
    read: Callable[[tree.Tree], dict[str, Dataset]]
    labels_in_paths: bool = False


@dataclasses.dataclass(frozen=True)
class Copy:
    """A dataset found and not yet read.

    Attributes:
      source: where it is, as `Dataset.source` reports it (a path).
      digest: fingerprint of its contents, the cache key.
      read: decode the splits it holds.
    """

    source: str
    digest: Callable[[], str]
    read: Callable[[], dict[str, Dataset]]


def env_data_dir() -> str | None:
    """$JAXCIFAR_DATA_DIR, or None where it is unset or empty (an empty path would name the
    current folder)."""
    return os.environ.get(DATA_DIR_ENV) or None


def load(name: str, split: str, *, data_dir: str | os.PathLike[str] | None = None) -> Dataset:
    """One split of a dataset, from `data_dir` (else $JAXCIFAR_DATA_DIR) or its official release.

    Args:
      name: "cifar10", "mnist" or "fashion_mnist".
      split: "train" or "test".
      data_dir: a folder or archive holding the dataset in one of the layouts in
        `formats(name)`; None reads $JAXCIFAR_DATA_DIR and, when that is unset too, the
        official release, downloaded on first use (`jaxcifar.data.download`).
    Returns:
      A `Dataset`: images (N, H, W, C) uint8 (C = 3 for cifar10, 1 otherwise), labels (N,) int32.
      Its `notes` (files the reader skipped) are warned of here, on every load.
    Raises:
      ConfigError: an unknown dataset or split name, an empty `data_dir`.
      DataError: the data is missing or malformed (the message names the file), looks like
        another dataset (a data dir named after one, an image-folder tree of its classes or
        image size), or its download fails (the message names the local options).
    """
    if name not in CLASS_NAMES:
        raise ConfigError(f"unknown dataset {name!r}; expected one of {', '.join(CLASS_NAMES)}")
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    # "" would read the current folder (Path("") is already ".", which cannot be told apart).
    if data_dir is not None and not os.fspath(data_dir):
        raise ConfigError(
            "data_dir is empty; expected a folder or archive path, or None for "
            f"${DATA_DIR_ENV} or else the official release"
        )
    from_env = False
    if data_dir is None:
        data_dir = env_data_dir()
        from_env = data_dir is not None
    if data_dir is None:
        offline_help = f"pass --data-dir or set ${DATA_DIR_ENV} to {describe(name)}"
        data_dir = download.fetch(name, offline_help)
    try:
        copy = locate(name, Path(data_dir).expanduser())
    except DataError as error:
        if from_env:  # a user who passed no path must learn where this one came from
            raise DataError(f"${DATA_DIR_ENV}: {error}") from None
        raise
    entry = cache.entry_path(name, copy.digest())
    dataset = cache.read_split(entry, split, source=copy.source)
    if dataset is None:
        key = entry, copy.source
        splits = _UNCACHED.get(key) or copy.read()
        if key not in _UNCACHED and not cache.write(entry, splits):
            _UNCACHED.clear()
            _UNCACHED[key] = splits
        dataset = splits[split]
    for note in dataset.notes:
        warnings.warn(note, stacklevel=2)
    return dataset


def load_split(
    name: str,
    split: str,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    limit: int | None = None,
    seed: int = 0,
) -> Dataset:
    """`load(name, split, data_dir=data_dir)`, cut to a random `limit` examples when given.

    Returns a `Dataset` like `load`'s with min(limit, N) examples, kept in their order;
    they are `Dataset.subset(limit, seed)`'s, so the same `seed` picks the same examples.
    Raises `load`'s errors, and ConfigError when `limit` is not a positive integer (checked
    before anything is read).
    """
    if limit is not None:
        check_count(limit, "limit")
    dataset = load(name, split, data_dir=data_dir)
    return dataset if limit is None else dataset.subset(limit, seed=seed)


def formats(name: str) -> tuple[Format, ...]:
    """The local layouts `name` may come in, in the order they are looked for."""
    image_folder_format = Format(
        image_folder.LAYOUT, frozenset(SPLITS), functools.partial(image_folder.read, name=name),
        labels_in_paths=True,
    )
    if name == "cifar10":
        return (
            Format(cifar.PYTHON_LAYOUT, cifar.PYTHON_NAMES, cifar.read_python),
            Format(cifar.BINARY_LAYOUT, cifar.BINARY_NAMES, cifar.read_binary),
            image_folder_format,
        )
    return (
        Format(idx.LAYOUT, idx.NAMES, functools.partial(idx.read, class_names=CLASS_NAMES[name])),
        image_folder_format,
    )


def describe(name: str) -> str:
    """What a data dir for `name` may hold, for error messages."""
    layouts = "; or ".join(fmt.layout for fmt in formats(name))
    aliases = ", ".join(f"{alias}*" for alias in ALIASES[name])
    return (
        f"a folder or .tar/.tar.gz archive holding {layouts} "
        f"(directly, or in a folder or archive named {aliases})"
    )


def locate(name: str, root: Path) -> Copy:
    """Find `name` in the data dir `root` without reading it.

    Looked at, in order: `root` itself when it is an archive; entries of `root` named after
    the dataset (folders holding a layout, or archives); `root` itself as a folder.
    `root` itself is refused as the copy when it is named after another dataset: IDX files
    do not say which dataset they hold, so Fashion-MNIST's would pass for MNIST's.
    """
    if root.is_file():
        if tree.is_archive(root):
            _check_not_named_after_another(name, root)
            return _archive_copy(name, root)
        raise DataError(f"data dir {root} is a file but not a .tar, .tar.gz or .tgz archive")
    if not root.is_dir():
        # A device or a pipe exists: "does not exist" would send users looking for a typo.
        what = "is not a folder or an archive" if root.exists() else "does not exist"
        raise DataError(f"data dir {root} {what}")
    named = sorted(entry for entry in root.iterdir() if _named_after(entry, name))
    for entry in named:
        if entry.is_dir() and (copy := _folder_copy(name, entry)):
            return copy
        if entry.is_file() and tree.is_archive(entry):
            return _archive_copy(name, entry)
    if copy := _folder_copy(name, root):
        _check_not_named_after_another(name, root)
        return copy
    # (A Fashion-MNIST folder read with the default --dataset cifar10 says so.)
    other = _other_dataset_named(name, root)
    hint = f"; it is named after {other}: is it {other} data?" if other else _split_hint(root)
    raise DataError(f"no {name} data in {root}: expected {describe(name)}{hint}")


def _split_hint(root: Path) -> str:
    """A hint for a folder of splits named otherwise than an image-folder tree's (`Train/`,
    `val/`), else ""."""
    names = {entry.name for entry in root.iterdir() if entry.is_dir()}
    near = sorted(n for n in names if n.lower() in ("train", "test", "val", "valid", "validation"))
    if not near:
        return ""
    return (f"; it holds {', '.join(f'{n}/' for n in near)}: an image-folder tree's splits are "
            "named train/ and test/, in lower case (a validation split can serve as test/)")


def _check_not_named_after_another(name: str, root: Path) -> None:
    """Raise DataError when `root`'s name starts with another dataset's alias (and not `name`'s)."""
    if other := _other_dataset_named(name, root):
        raise DataError(
            f"data dir {root} is named after {other}, not {name}: point it at {name}'s "
            f"data, or rename it if it holds {name}"
        )


def _other_dataset_named(name: str, root: Path) -> str | None:
    """The other dataset whose alias `root`'s name starts with (and not `name`'s), if any."""
    # abspath names "." and "x/.." by the folder they are, without following symbolic links.
    folder = Path(os.path.abspath(root))
    if _named_after(folder, name):
        return None
    return next((other for other in ALIASES if _named_after(folder, other)), None)


def _named_after(path: Path, name: str) -> bool:
    """Whether `path`'s name starts with one of dataset `name`'s aliases, not followed by a
    digit: "cifar-10-batches-py" is CIFAR-10's, "cifar-100-python" is not."""
    lower = path.name.lower()
    return any(
        lower.startswith(alias) and not lower[len(alias) : len(alias) + 1].isdigit()
        for alias in ALIASES[name]
    )


def _folder_copy(name: str, folder: Path) -> Copy | None:
    """`folder` as a copy of `name`, when its entries match one of the layouts."""
    entries = {entry.name for entry in folder.iterdir()}
    for fmt in formats(name):
        if names := entries & fmt.top_names:
            return Copy(
                str(folder),
                digest=lambda: cache.folder_digest(
                    folder, tree.walk(folder, names)[0], inodes=fmt.labels_in_paths
                ),
                read=lambda: fmt.read(tree.read_folder(folder, names)),
            )
    return None


def _archive_copy(name: str, archive: Path) -> Copy:
    """An archive as a copy of `name`; its layout is known only once it is read."""

    def read() -> dict[str, Dataset]:
        contents = tree.read_tar(archive)
        for fmt in formats(name):
            if contents.top_names() & fmt.top_names:
                return fmt.read(contents)
        raise DataError(f"{archive} holds no {name} data: expected {describe(name)}")

    return Copy(str(archive), digest=lambda: cache.file_digest(archive), read=read)

