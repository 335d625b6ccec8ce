"""A trained speedrun model on disk, so `jaxcifar evaluate` and `predict` can use it.

`jaxcifar speedrun` writes OUT/model.msgpack after each run (so in the end the last run's): a
format tag and version, the recipe, the dataset's name, class names and image shape, the
training set's channel statistics (inputs are standardised by them), the weights the run ended
with (the lookahead average its TTA accuracy was measured with) with their batch-norm
statistics, and where the number came from: the run's seed and the random train and test
subsets it used (`Subsets`), so `evaluate` can test on the same images. Files written before
the seed and subsets were recorded lack them and still load (as None): the fields are
optional, so the format version stays 1 (and older readers skip them).
Written atomically: a crash leaves the previous file intact.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization

from jaxcifar import checkpoint, compiling
from jaxcifar.atomic import atomic_write_bytes
from jaxcifar.checkpoint import read_tagged
from jaxcifar.errors import CheckpointError, ConfigError
from jaxcifar.files import read_regular_file
from jaxcifar.models import checks
from jaxcifar.speedrun import net
from jaxcifar.speedrun.recipe import Recipe
from jaxcifar.speedrun.train import EVAL_BATCH, XLA_OPTIONS, batched, predict, tta_logits

FORMAT = "jaxcifar-speedrun-model"
VERSION = 1
FILENAME = "model.msgpack"


class Subsets(NamedTuple):
    """The random subsets a speedrun trained and tested on: `load_split`'s limits and seed."""

    seed: int
    limit_train: int | None  # None: the whole split
    limit_test: int | None


class SavedModel(NamedTuple):
    """A speedrun model as `load` reads it: its recipe, data description and weights."""

    path: Path
    recipe: Recipe
    dataset: str
    class_names: tuple[str, ...]
    input_shape: tuple[int, int, int]  # (H, W, C)
    mean: jax.Array  # (C,) float32, [0, 1] units
    std: jax.Array  # (C,) float32
    params: net.Params
    batch_stats: net.BatchStats
    seed: int | None = None  # the seed of the run that trained it; None: not recorded
    subsets: Subsets | None = None  # None: not recorded
    # {"source": the training data's absolute path}, as a checkpoint's `train_data` starts;
    # None: not recorded.
    train_data: dict[str, Any] | None = None


def save(
    directory: str | os.PathLike[str], recipe: Recipe, params: net.Params,
    batch_stats: net.BatchStats, mean: jax.Array, std: jax.Array, *, dataset: str,
    class_names: tuple[str, ...], input_shape: tuple[int, int, int], seed: int | None = None,
    subsets: Subsets | None = None, source: str | None = None,
) -> Path:  # fmt: skip
    """Write DIR/model.msgpack atomically; returns its path. `seed` (the run's), `subsets`
    and `source` (where its training data was read: `evaluate` reads it again when no data
    is named) are written when given."""
    provenance = {
        "seed": seed, "subsets": None if subsets is None else subsets._asdict(),
        # Absolute: a bare evaluate reads it again, perhaps from another folder.
        "train_data": None if source is None else {"source": os.path.abspath(source)},
    }  # fmt: skip
    payload = {
        "format": FORMAT,
        "version": VERSION,
        # msgpack has lists, not tuples (the widths).
        "recipe": {
            name: list(value) if isinstance(value, tuple) else value
            for name, value in dataclasses.asdict(recipe).items()
        },
        "dataset": dataset,
        "class_names": list(class_names),
        "input_shape": list(input_shape),
        "mean": np.asarray(mean),
        "std": np.asarray(std),
        "params": serialization.to_state_dict(jax.device_get(params)),
        "batch_stats": serialization.to_state_dict(jax.device_get(batch_stats)),
        **{name: value for name, value in provenance.items() if value is not None},
    }
    path = Path(directory) / FILENAME
    atomic_write_bytes(path, serialization.msgpack_serialize(payload))
    return path


def find(path: str | os.PathLike[str]) -> Path | None:
    """The speedrun model `path` names, or None when it names none (a training checkpoint,
    say): a folder holding model.msgpack, a file of that name (but a training checkpoint
    copied under it), or another file with this format's tag. ConfigError for a folder that
    holds a training checkpoint too: which one --checkpoint means is for the user to say. (A
    model.msgpack that is not readable is still the one meant: `load` says what is wrong
    with it.)"""
    path = Path(path)
    if path.is_dir():
        if not (path / FILENAME).exists():
            return None
        if (path / checkpoint.FILENAME).exists():
            raise ConfigError(
                f"--checkpoint {path} holds both a speedrun model ({FILENAME}) and a training "
                f"checkpoint ({checkpoint.FILENAME}); name the file: --checkpoint "
                f"{path / FILENAME} or {path / checkpoint.FILENAME}"
            )
        return path / FILENAME
    tag = _format_tag(path)
    if path.name == FILENAME:  # a training checkpoint copied under this name is still one
        return None if tag == checkpoint.FORMAT else path
    return path if tag == FORMAT else None


def _format_tag(path: Path) -> str | None:
    """The format tag of the msgpack file `path`; None for a file that is missing, unreadable,
    not msgpack or untagged."""
    try:
        payload = serialization.msgpack_restore(read_regular_file(path))
    except Exception:  # (not a regular file, any decoder failure: no tag to read)
        return None
    return payload.get("format") if isinstance(payload, dict) else None


def load(path: str | os.PathLike[str]) -> SavedModel:
    """Read a speedrun model; CheckpointError names the file when it is not one, is of
    another format version, or its weights do not fit its recipe's network."""
    path = Path(path)
    payload = read_tagged(path, FORMAT, VERSION, "speedrun model")
    try:
        recipe = Recipe(**{**payload["recipe"], "widths": tuple(payload["recipe"]["widths"])})
        class_names = tuple(payload["class_names"])
        height, width, channels = checkpoint.input_shape(payload["input_shape"])
        params, batch_stats = jax.eval_shape(functools.partial(
            net.init, widths=recipe.widths, in_channels=channels, num_classes=len(class_names)
        ), jax.random.key(0))  # fmt: skip
        template = {"params": params, "batch_stats": batch_stats}
        state = {name: payload[name] for name in template}
        weights = checkpoint.state_from_dict(state, template, path)
        return SavedModel(
            path=path, recipe=recipe, dataset=payload["dataset"], class_names=class_names,
            input_shape=(height, width, channels), mean=jnp.asarray(payload["mean"]),
            std=jnp.asarray(payload["std"]), params=weights["params"],
            batch_stats=weights["batch_stats"], seed=payload.get("seed"),
            subsets=_subsets(payload["subsets"]) if "subsets" in payload else None,
            train_data=_train_data(payload["train_data"]) if "train_data" in payload else None,
        )  # fmt: skip
    # ConfigError: a recipe field out of its range (a hand-edited file).
    except (KeyError, TypeError, ValueError, ConfigError) as error:
        raise CheckpointError(f"{path}: malformed speedrun model ({error})") from None


def _subsets(value: dict[str, Any]) -> Subsets:
    """Saved `Subsets`, ValueError unless the seed is an integer and each limit None or a
    positive integer (as `load_split` takes them; it would name no file)."""
    subsets = Subsets(**value)
    limits = (subsets.limit_train, subsets.limit_test)
    if type(subsets.seed) is not int or not all(
        limit is None or (type(limit) is int and limit > 0) for limit in limits
    ):
        raise ValueError(f"subsets {value!r}; expected an integer seed and positive limits")
    return subsets


def _train_data(value: Any) -> dict[str, Any] | None:
    """A saved `train_data`: None (not recorded), else a dict whose "source" is a path,
    ValueError otherwise. Other keys are kept, as a checkpoint's record has more."""
    if value is not None and not (isinstance(value, dict) and isinstance(value.get("source"), str)):
        raise ValueError(f"train_data {value!r}; expected {{'source': a path, ...}}")
    return value


def logits(model: SavedModel, images: jax.Array) -> jax.Array:
    """(N, num_classes) float32 test-time-augmented logits of uint8 images (N, H, W, C);
    TypeError or ValueError for other images (`check_images`)."""
    check_images(model, images, "model_file.logits")
    return tta_logits(
        model.recipe, model.params, model.batch_stats, model.mean, model.std, images
    )


def check_images(model: SavedModel, images: jax.Array, where: str) -> None:
    """Raise TypeError unless `images` are uint8 (the model standardises raw pixels itself:
    floats in [-1, 1] would all read as nearly black), ValueError unless they are (N, H, W,
    C) of the model's input shape (others give logits of the wrong inputs, or fail deep
    inside the network)."""
    shape = jnp.shape(images)
    checks.check_uint8_pixels(jnp.result_type(images), where, "the model standardises")
    if shape[1:] != model.input_shape:
        checks.check_not_nchw(shape, where, (model.input_shape[2],))
        one_image = " (one image: add the batch axis, images[None])"
        height, width, channels = model.input_shape
        raise ValueError(
            f"{where}: images {shape}{one_image if shape == model.input_shape else ''}; "
            f"expected (N, {height}, {width}, {channels}), the images {model.path} was trained on"
        )


def predictions(model: SavedModel, images: np.ndarray) -> np.ndarray:
    """(N,) int32 TTA predictions of uint8 images (N, H, W, C), EVAL_BATCH at a time. Raises
    TypeError or ValueError for other images (`check_images`), CheckpointError where the
    weights give non-finite logits (a diverged or edited model)."""
    check_images(model, images, "model_file.predictions")
    # Compiled as the training run compiled it (on a CPU: convolutions not on YNNPACK's kernels;
    # rounding to the compute dtype where the program says).
    predict_batches = compiling.compiled_per_shape(
        jax.jit(functools.partial(predict, model.recipe)), XLA_OPTIONS
    )
    out = predict_batches(
        model.params, model.batch_stats, model.mean, model.std, batched(images, EVAL_BATCH)
    )
    out = np.asarray(out).reshape(-1)[: len(images)]
    if (out < 0).any():
        raise CheckpointError(
            f"{model.path}: its weights give non-finite logits for {int((out < 0).sum())} of "
            f"{len(images)} images"
        )
    return out
