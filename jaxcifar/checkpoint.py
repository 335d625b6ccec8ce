"""Checkpoints: one msgpack file per run folder, rewritten atomically after every epoch.

`DIR/checkpoint.msgpack` holds a format tag and version, the run's config, the input shape
and class names (so `predict` needs no dataset), what the training set was (its source,
size and a digest, so that a resume on other data is caught), the epoch history so far, and
the `TrainState` (params, optimizer state, step) as a flax state dict. The rng needs no storing:
every key derives from config.seed and the epoch (see `jaxcifar.train`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np
from flax import serialization

from jaxcifar.atomic import atomic_write_bytes
from jaxcifar.config import RunConfig
from jaxcifar.errors import CheckpointError, ConfigError, cannot_read
from jaxcifar.files import read_regular_file

FORMAT = "jaxcifar-checkpoint"
VERSION = 1
FILENAME = "checkpoint.msgpack"


class Checkpoint(NamedTuple):
    """A loaded checkpoint; `state` is the raw state dict, turned into arrays by `restore`."""

    path: Path
    config: RunConfig
    input_shape: tuple[int, int, int]
    class_names: tuple[str, ...]
    history: list[dict[str, float]]
    state: dict[str, Any]
    train_data: dict[str, Any] | None = None  # see `save`; None in checkpoints before it


def resolve(path: str | os.PathLike[str]) -> Path:
    """A checkpoint file, or a run folder holding one (DIR/checkpoint.msgpack). A folder named
    checkpoint.msgpack is the file's place, not a run folder: it reads as a folder where the
    file should be, not as DIR/checkpoint.msgpack/checkpoint.msgpack missing."""
    path = Path(path)
    return path / FILENAME if path.is_dir() and path.name != FILENAME else path


def save(
    directory: str | os.PathLike[str],
    state: Any,
    config: RunConfig,
    *,
    input_shape: tuple[int, ...],
    class_names: tuple[str, ...],
    history: list[dict[str, float]],
    train_data: dict[str, Any] | None = None,
) -> Path:
    """Write DIR/checkpoint.msgpack atomically (a crash leaves the previous one intact).
    `train_data`: what the training set was, {"source": str, "examples": int, "digest": str
    of its labels, image shape and class names}, which a resume compares."""
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "config": config.to_dict(),
        "input_shape": list(input_shape),
        "class_names": list(class_names),
        "train_data": train_data,
        "history": list(history),
        "state": serialization.to_state_dict(jax.device_get(state)),
    }
    path = Path(directory) / FILENAME
    atomic_write_bytes(path, serialization.msgpack_serialize(payload))
    return path


def read_tagged(path: Path, format_tag: str, version: int, what: str) -> dict[str, Any]:
    """The msgpack document at `path`, checked to carry `format_tag` and `version`.

    CheckpointError names the file when it is missing or unreadable, truncated or corrupt,
    not tagged `format_tag`, or of another version; `what` ("checkpoint") names the kind in
    the message.
    """
    try:
        data = read_regular_file(path)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no {what} there") from None
    except OSError as error:  # a folder, no permission, a disk error: not a corrupt file
        raise CheckpointError(cannot_read(path, error)) from None
    if data.lstrip()[:1] == b"{":  # called corrupt, a report beside the model misled
        raise CheckpointError(
            f"{path}: not a {what} but JSON text, as a run's metrics.json or speedrun.json "
            f"holds; pass the run's folder"
        )
    try:
        payload = serialization.msgpack_restore(data)
    except Exception as error:  # msgpack raises several unrelated types on corrupt input
        raise CheckpointError(
            f"{path}: not a readable {what} (truncated or corrupt: {error})"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != format_tag:
        raise CheckpointError(f"{path}: not a jaxcifar {what} (no {format_tag!r} format tag)")
    if payload.get("version") != version:
        raise CheckpointError(
            f"{path}: {what} format version {payload.get('version')!r}, this jaxcifar reads "
            f"{version}"
        )
    return payload


def load(path: str | os.PathLike[str]) -> Checkpoint:
    """Read and check a checkpoint; CheckpointError names the file when it is missing,
    unreadable, truncated, not a jaxcifar checkpoint, of another format version, or holds
    malformed fields (an input shape other than three positive integers, ...)."""
    path = resolve(path)
    payload = read_tagged(path, FORMAT, VERSION, "checkpoint")
    try:
        config = RunConfig.from_dict(payload["config"])
        return Checkpoint(
            path=path,
            config=config,
            input_shape=input_shape(payload["input_shape"]),
            class_names=tuple(payload["class_names"]),
            history=[_epoch_record(record) for record in payload["history"]],
            state=payload["state"],
            train_data=_train_data(payload.get("train_data")),
        )
    except (KeyError, TypeError, ValueError, ConfigError) as error:
        raise CheckpointError(f"{path}: malformed checkpoint ({error})") from None


def _train_data(value: Any) -> dict[str, Any] | None:
    """A saved `train_data` record (see `save`), TypeError unless None or one of its fields."""
    if value is None:
        return None
    if not (isinstance(value, dict) and isinstance(value.get("source"), str)
            and type(value.get("examples")) is int and isinstance(value.get("digest"), str)):
        raise TypeError(f"train_data {value!r:.80}; expected its source, examples and digest")
    return value


def input_shape(value: Any) -> tuple[int, int, int]:
    """A saved (H, W, C) input shape, ValueError unless three positive integers: a model of
    no pixels fails later, blaming the image given to it."""
    shape = tuple(value)
    if len(shape) != 3 or not all(type(size) is int and size > 0 for size in shape):  # not bool
        raise ValueError(f"input_shape {value!r}; expected three positive integers, (H, W, C)")
    return shape


def _epoch_record(record: Any) -> dict[str, Any]:
    """One `history` entry as a dict, KeyError unless it holds every `EpochRecord` field (the
    reports and a resume read them all) but `test_examples`, which checkpoints saved before
    it was recorded lack: None, not known."""
    from jaxcifar.train import EpochRecord  # imported when read: train builds on this module

    if not isinstance(record, dict):
        raise TypeError(f"history record {record!r:.80}; expected a mapping of its fields")
    missing = [name for name in EpochRecord._fields if name not in record]
    if missing and missing != ["test_examples"]:
        raise KeyError(f"history record without {', '.join(missing)}")
    return {name: record.get(name) for name in EpochRecord._fields}


def restore(checkpoint: Checkpoint, template: Any) -> Any:
    """The checkpoint's state as the pytree `template` (arrays or ShapeDtypeStructs of the
    expected shapes and dtypes); CheckpointError when the structure, a shape or a dtype of
    any state array (parameters, optimizer state, step) differs."""
    return state_from_dict(checkpoint.state, template, checkpoint.path)


def state_from_dict(state: dict[str, Any], template: Any, path: Path) -> Any:
    """A flax state dict read from file `path` as the pytree `template` (arrays or
    ShapeDtypeStructs), as jax arrays; CheckpointError naming `path` when its structure, or
    any array's shape or dtype, differs from the template's."""
    try:
        restored = serialization.from_state_dict(template, state)
    # AttributeError: a state that is no dict (None, a list) where flax expects one.
    except (KeyError, ValueError, TypeError, AttributeError) as error:
        raise CheckpointError(f"{path}: state does not fit this model ({error})") from None
    expected = jax.tree.map(lambda leaf: (tuple(leaf.shape), np.dtype(leaf.dtype)), template)
    found = jax.tree.map(lambda leaf: (tuple(np.shape(leaf)), np.asarray(leaf).dtype), restored)
    if expected != found:
        raise CheckpointError(f"{path}: state array shapes or dtypes do not fit this model")
    return jax.tree.map(jax.numpy.asarray, restored)
