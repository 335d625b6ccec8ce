"""Classify image files with a trained checkpoint: the top-3 classes and their probabilities.

Each image file Pillow reads (PNG, JPEG, GIF, WebP, BMP, TIFF, ...; grayscale, palette and
RGBA are converted) is resized with Pillow to the model's input size. Any size up to Pillow's
decompression-bomb limit (Image.MAX_IMAGE_PIXELS, about 89 megapixels, e.g. 8000x8000) is
read; a larger one is refused rather than decoded, since one such file can take gigabytes. A
file that cannot be read as an image gets an error line and the others are still classified;
the exit status is then 1. A speedrun model (`jaxcifar speedrun`'s model.msgpack) classifies
with its test-time augmentation.
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

import numpy as np

from jaxcifar.commands.arguments import add_checkpoint_argument
from jaxcifar.data.image_file import decode
from jaxcifar.errors import CheckpointError, DataError, one_line

HELP = "classify image files with a trained checkpoint"
TOP_K = 3


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_checkpoint_argument(parser)
    parser.add_argument("images", nargs="+", metavar="IMAGE",
                        help="image files Pillow reads: PNG, JPEG, GIF, WebP, BMP, TIFF, ...")


def read_image(path: Path, input_shape: tuple[int, int, int]) -> np.ndarray:
    """(H, W, C) uint8 pixels of `path`, converted to C channels and resized to H x W.

    Raises DataError naming `path` for a missing, empty or non-image file, or one of more
    than Image.MAX_IMAGE_PIXELS pixels (see `jaxcifar.data.image_file.decode`).
    """
    height, width, channels = input_shape
    return decode(path, "L" if channels == 1 else "RGB", str(path), size=(width, height))


def run(args: argparse.Namespace) -> int:
    import jax
    import jax.numpy as jnp

    from jaxcifar import checkpoint, compiling, train
    from jaxcifar.data.preprocess import to_float
    from jaxcifar.speedrun import model_file
    from jaxcifar.speedrun.train import XLA_OPTIONS

    speedrun_model = model_file.find(args.checkpoint)
    options = None
    if speedrun_model is not None:
        saved = model_file.load(speedrun_model)
        logits = functools.partial(model_file.logits, saved)  # with its test-time augmentation
        options = XLA_OPTIONS  # rounding as its training run did
    else:
        saved = checkpoint.load(args.checkpoint)
        model, params = train.restore_model(saved)
        compute_dtype = jnp.dtype(saved.config.dtype)  # as it trained and `evaluate` measures

        def logits(images):
            return model.apply(params, to_float(images), dtype=compute_dtype)

    def softmax_of_logits(images):
        return jax.nn.softmax(logits(images))

    # Compiled as training and evaluation compile (on a CPU: Eigen's convolutions).
    probabilities = compiling.compiled_per_shape(jax.jit(softmax_of_logits), options)

    failures = 0
    for name in args.images:
        try:
            pixels = read_image(Path(name), saved.input_shape)
        except DataError as error:
            print(f"jaxcifar predict: error: {one_line(str(error))}", file=sys.stderr)
            failures += 1
            continue
        probs = np.asarray(probabilities(pixels[None]))[0]
        if not np.isfinite(probs).all():  # a diverged or edited model: no ranking to give
            raise CheckpointError(f"{saved.path}: its weights give non-finite outputs for {name}")
        top = np.argsort(-probs)[:TOP_K]
        ranked = ", ".join(f"{saved.class_names[i]} {probs[i]:.3f}" for i in top)
        print(f"{one_line(name)}: {ranked}")  # one image, one line
    return 1 if failures else 0
