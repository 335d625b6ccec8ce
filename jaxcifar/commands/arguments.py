"""Flag types, flag groups (the multi-process flags among them) and checks of what flags name
(an output folder, the data a saved model is given), shared by several commands."""

from __future__ import annotations

import argparse
import errno
import math
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

from jaxcifar import parallel
from jaxcifar.atomic import link_target, name_max
from jaxcifar.config import DATASETS, INT32_MAX, SEED_MAX
from jaxcifar.data.dataset import Dataset
from jaxcifar.data.sources import DATA_DIR_ENV, env_data_dir
from jaxcifar.errors import ConfigError, DataError
from jaxcifar.xla_cache import OFF as COMPILE_CACHE_OFF


def _integer(text: str, expected: str, low: int, high: float = math.inf) -> int:
    """argparse type body: an integer in low..min(high, INT32_MAX), else "expected
    EXPECTED, got ...". No count a flag takes goes past INT32_MAX: epochs, batch sizes, layer
    widths and subset sizes beyond it are mistakes, and would overflow int32 step counters or
    msgpack's integers."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
    if not low <= value <= high:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {value}")
    if value > INT32_MAX:
        raise argparse.ArgumentTypeError(f"expected {expected} up to {INT32_MAX:,}, got {value}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer > 0."""
    return _integer(text, "a positive integer", 1)


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    return _integer(text, "an integer >= 0", 0)


def int_in_range(low: int, high: int) -> Callable[[str], int]:
    """argparse type: an integer in low..high."""

    def in_range(text: str) -> int:
        return _integer(text, f"an integer in {low}..{high}", low, high)

    return in_range


# Every command's --seed: `RunConfig`'s range, so no command accepts a seed `train` refuses
# (and NumPy's generators, which take no negative seed, never see one).
seed_int = int_in_range(0, SEED_MAX)


def _finite_float(text: str, *, allow_zero: bool) -> float:
    """argparse type body: a finite float > 0 (>= 0 with `allow_zero`)."""
    expected = "a finite number >= 0" if allow_zero else "a positive finite number"
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
    if not (value >= 0 if allow_zero else value > 0) or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite float > 0."""
    return _finite_float(text, allow_zero=False)


def non_negative_float(text: str) -> float:
    """argparse type: a finite float >= 0."""
    return _finite_float(text, allow_zero=True)


def momentum(text: str) -> float:
    """argparse type: a momentum, a float in [0, 1) (at 1 the velocity never decays)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {value}")
    return value


def data_dir(text: str) -> str:
    """argparse type: a --data-dir path, not empty (Path("") is the current folder, which
    would be searched instead)."""
    if not text:
        raise argparse.ArgumentTypeError("expected a folder or archive path, got ''")
    return text


def add_data_dir_argument(parser: argparse.ArgumentParser, recorded: str | None = None) -> None:
    """`--data-dir`; when not given (None), `jaxcifar.data.load` reads $JAXCIFAR_DATA_DIR,
    else the official release, and names the variable in its errors. `recorded`: the data
    a saved model recorded, which the command reads before the release
    (`data_dir_or_recorded`), as the help says it."""
    before_release = f"{recorded}; else " if recorded else ""
    parser.add_argument(
        "--data-dir", type=data_dir,
        default=None,
        metavar="PATH",
        help="local data: a folder (or archive) holding the canonical CIFAR-10 python or binary "
        "release, MNIST-format IDX files, or an image-folder tree train/<class>/*, test/<class>/*. "
        f"When not given, ${DATA_DIR_ENV}; when that is unset too, {before_release}the dataset's "
        "official release, downloaded once (SHA-256 checked) into $JAXCIFAR_CACHE/downloads.",
    )  # fmt: skip


class DataChoice(NamedTuple):
    """Where a command's data comes from: `data_dir`, what `load` is given (None: the
    variable, else the official release), `origin`, how messages name it, and `recorded`,
    whether it is the data a checkpoint or model recorded (no --data-dir or variable given),
    which a command says it used."""

    data_dir: str | None
    origin: str
    recorded: bool = False


def data_dir_or_recorded(
    data_dir: str | None, recorded: Mapping[str, Any] | None, recorded_by: str = "the checkpoint"
) -> DataChoice:
    """`data_dir` (--data-dir), else $JAXCIFAR_DATA_DIR; when neither is given, the source of
    the training set a checkpoint `recorded` (its `train_data`), where that still exists: a
    bare `train --resume` or `evaluate` of a run trained on the user's own folder went to
    download the official release (170 MB for CIFAR-10), to refuse it as other data. The
    origin is named in messages about the data: one that said --data-dir of data the variable
    named sent the user looking for a flag never given. `recorded_by`: what holds the record
    ("the checkpoint", "the speedrun model"), as the origin names it."""
    if data_dir is not None:
        return DataChoice(data_dir, "--data-dir")
    if env_data_dir() is not None:
        return DataChoice(None, f"${DATA_DIR_ENV}")
    if recorded is not None and os.path.exists(recorded["source"]):
        return DataChoice(recorded["source"], f"recorded in {recorded_by}", recorded=True)
    return DataChoice(None, "the official release")


def add_data_arguments(parser: argparse.ArgumentParser, default_dataset: str = "cifar10") -> None:
    """`--dataset` (default `default_dataset`) and `--data-dir`."""
    parser.add_argument(
        "--dataset", choices=DATASETS, default=default_dataset, help="which dataset to use"
    )
    add_data_dir_argument(parser)


def _checkpoint_path(text: str) -> str:
    """argparse type: a --checkpoint path, not empty (Path("") is the current folder, which
    would be searched instead, and called no checkpoint)."""
    if not text:
        raise argparse.ArgumentTypeError("expected a checkpoint file or folder, got ''")
    return text


def add_checkpoint_argument(parser: argparse.ArgumentParser) -> None:
    """--checkpoint C (required): what `evaluate` and `predict` read."""
    parser.add_argument(
        "--checkpoint", required=True, metavar="C", type=_checkpoint_path,
        help="a checkpoint file, or a training output folder holding checkpoint.msgpack; or a "
        "speedrun's model.msgpack or output folder",
    )  # fmt: skip


def output_folder(text: str) -> Path:
    """argparse type: an --out folder; an empty one would write into the current folder."""
    if not text:
        raise argparse.ArgumentTypeError("expected a folder; got ''")
    return Path(text)


def compile_cache(text: str) -> str:
    """argparse type: a --compile-cache folder (existing or not) that can be written, or
    "none". An empty value would put JAX's cache files in the current folder, a file or an
    unwritable folder would only bring JAX warnings."""
    if not text:
        raise argparse.ArgumentTypeError(
            f"expected a folder, or '{COMPILE_CACHE_OFF}' to turn the cache off; got ''"
        )
    if text == COMPILE_CACHE_OFF:
        return text
    if os.path.exists(text) and not os.path.isdir(text):  # (False, not OSError, on bad names)
        raise argparse.ArgumentTypeError(
            f"{text} is a file; expected a folder, or '{COMPILE_CACHE_OFF}' to turn the cache off"
        )
    if reason := _probe(Path(text)):  # else JAX warns at every compile and saves nothing
        raise argparse.ArgumentTypeError(
            f"{text}: cannot write there ({reason}); expected a folder that can be written, "
            f"or '{COMPILE_CACHE_OFF}' to turn the cache off"
        )
    return text


def add_compile_cache_argument(parser: argparse.ArgumentParser) -> None:
    """`--compile-cache DIR` (see `jaxcifar.xla_cache.resolve`)."""
    parser.add_argument(
        "--compile-cache", type=compile_cache, metavar="DIR",
        help="persistent XLA compilation cache, so a second run starts with compiled programs; "
        f"when not given, $JAXCIFAR_CACHE/xla, else ~/.cache/jaxcifar/xla; '{COMPILE_CACHE_OFF}' "
        "turns it off",
    )  # fmt: skip


FILE_STEM_MAX_BYTES = 250  # NAME.json within the 255 bytes most file systems hold in a name


def file_stem(text: str) -> str:
    """argparse type: a plain file name stem, so output files stay inside their folder, short
    enough that a file name made of it and a suffix of up to 5 characters can be written."""
    separators = [sep for sep in ("/", os.sep, os.altsep) if sep]
    if not text or text.startswith(".") or any(sep in text for sep in separators):
        raise argparse.ArgumentTypeError(
            f"expected a plain file name stem (not empty, no '/', not starting with '.'), "
            f"got {text!r}"
        )
    if (size := len(os.fsencode(text))) > FILE_STEM_MAX_BYTES:
        raise argparse.ArgumentTypeError(
            f"expected a file name stem of at most {FILE_STEM_MAX_BYTES} bytes, got one of "
            f"{size} bytes"
        )
    return text


def _probe(folder: Path) -> str | None:
    """The OS's reason why `folder` cannot be written in, else None: a probe file is written in
    it or, while it does not exist, in its nearest existing parent, where it would be made.
    It is not made here: a command that then fails on another input leaves no empty folder
    behind (files are written through `jaxcifar.atomic`, which makes their folders).
    (Probing beats os.access, which says yes to root.)"""
    existing, missing = folder, []
    while not os.path.exists(existing) and existing != existing.parent:
        if os.path.islink(existing):  # to nothing: making the folder would fail, "File exists"
            return f"a symbolic link to {os.readlink(existing)}, which leads to nothing"
        existing, missing = existing.parent, [existing.name, *missing]
    if not os.path.isdir(existing):
        return os.strerror(errno.ENOTDIR)
    try:
        # A name the file system cannot hold fails only when made: check each one to be made.
        if any(len(os.fsencode(name)) > name_max(existing) for name in missing):
            return os.strerror(errno.ENAMETOOLONG)
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        return str(error.strerror or error)
    return None


def check_writable_folder(folder: Path) -> None:
    """Check that output folder `folder` (--out) can be made and written in, so a bad --out
    fails before the work rather than after it."""
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise ConfigError(f"--out {folder} is a file; expected a folder (or a path to create one)")
    if reason := _probe(folder):
        raise ConfigError(f"--out {folder}: cannot write there ({reason})")


# checkpoint.FILENAME, spelled out so that the NumPy-only `scratch` need not import JAX to
# check its --out (tests/test_checkpoint.py checks that the two agree).
TRAINING_CHECKPOINT = "checkpoint.msgpack"


def check_not_a_training_run(folder: Path) -> None:
    """ConfigError when output folder `folder` (--out) holds a training run (its checkpoint):
    another command's reports would replace the run's metrics.json and figures, losing its
    epochs and timings, and a resume would then take them for its own."""
    if (folder / TRAINING_CHECKPOINT).exists():
        raise ConfigError(
            f"--out {folder} holds a training run ({TRAINING_CHECKPOINT}), whose reports "
            "this would replace; pick another --out"
        )


def check_writable_file(path: Path) -> None:
    """Check that output file `path` (--out) can be written: not a folder, its folder one that
    can be made and written in, its name one the file system holds, so a bad --out fails
    before the work rather than after it."""
    if path.is_dir():
        raise ConfigError(f"--out {path} is a folder; expected a file name")
    try:
        folder = link_target(path).parent  # a link is written through, as open() writes
    except OSError as error:
        raise ConfigError(
            f"--out {path}: cannot write there (a symbolic link to {os.path.realpath(path)}: "
            f"{error.strerror})"
        ) from None
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"--out {path}: {folder} is a file, not a folder")
    if reason := _probe(folder):
        raise ConfigError(f"--out {path}: cannot write in {folder} ({reason})")
    # (The atomic write's temporary name is cut to fit: only the name itself can be too long.)
    if len(os.fsencode(path.name)) > name_max(folder):  # (255 where folder is still to make)
        raise ConfigError(f"--out {path}: cannot write there ({os.strerror(errno.ENAMETOOLONG)})")


def check_data_fits_model(
    dataset: Dataset, split: str, origin: str, saved: Path, input_shape: tuple[int, ...],
    class_names: tuple[str, ...], *, trained_dataset: str | None = None,
) -> None:  # fmt: skip
    """DataError unless `dataset` (its `split`, "train" or "test", from `origin`, as
    `DataChoice` names it) has the (H, W, C) `input_shape` and the `class_names` of the data
    the model in file `saved` was trained on (`Dataset.mismatch`); a checkpoint's restore
    would otherwise fail without naming the data. `trained_dataset`: the --dataset the model
    was trained on, where another one was asked for (a resume's override), which the message
    then names instead of --data-dir."""
    mismatch = dataset.mismatch(input_shape, class_names)
    if mismatch is not None:
        what, found, expected = mismatch
        fix = ("pass the --data-dir of the data it was trained on" if trained_dataset is None
               else f"it was trained on --dataset {trained_dataset}")  # fmt: skip
        raise DataError(
            f"the {split} set in {dataset.source} ({origin}) has {what} {found}, but {saved} "
            f"was trained on {expected}; {fix}"
        )


def add_distributed_arguments(parser: argparse.ArgumentParser) -> None:
    """--coordinator HOST:PORT, --num-processes N, --process-id I, each defaulting to its
    JAXCIFAR_* environment variable (parsed like the flag, so a bad value is a flag error
    that names the variable; an empty one counts as unset)."""
    group = parser.add_argument_group(
        "multi-process (multi-host) training",
        "give all three, or none: then JAX detects a Cloud TPU pod, SLURM or Open MPI job "
        "itself, else the run is one process",
    )
    for flag, variable, parse, metavar, what in (
        ("--coordinator", parallel.COORDINATOR_ENV, str, "HOST:PORT", "address of process 0"),
        ("--num-processes", parallel.NUM_PROCESSES_ENV, positive_int, "N",
         "number of processes"),
        ("--process-id", parallel.PROCESS_ID_ENV, int, "I", "this process, 0..N-1"),
    ):  # fmt: skip
        group.add_argument(flag, type=_naming_the_variable(parse), metavar=metavar,
                           default=_EnvText.read(variable),
                           help=f"{what}; when not given, ${variable}")  # fmt: skip


class _EnvText(str):
    """A flag's default as the text of its environment variable, which it names."""

    variable: str

    @classmethod
    def read(cls, variable: str) -> _EnvText | None:
        """The variable's text, or None when it is unset or empty."""
        text = os.environ.get(variable)
        if not text:
            return None
        value = cls(text)
        value.variable = variable
        return value


def _naming_the_variable(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """argparse type `parse`, whose error for a default read from a variable names it:
    argparse alone names only the flag, which the user never typed."""

    def parse_flag_or_variable(text: str) -> Any:
        try:
            return parse(text)
        except (argparse.ArgumentTypeError, ValueError) as error:
            if not isinstance(text, _EnvText):
                raise
            reason = error if isinstance(error, argparse.ArgumentTypeError) else "not an integer"
            raise argparse.ArgumentTypeError(f"${text.variable}={str(text)!r}: {reason}") from None

    parse_flag_or_variable.__name__ = parse.__name__  # argparse's "invalid int value" names it
    return parse_flag_or_variable


def initialize_from_args(args: argparse.Namespace) -> bool:
    """`parallel.initialize` with the flags of `add_distributed_arguments`."""
    return parallel.initialize(args.coordinator, args.num_processes, args.process_id)
