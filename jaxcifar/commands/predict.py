"""Classify image files with a trained checkpoint: the top-3 classes and their probabilities.

Each PNG/JPEG file (any size; grayscale, palette and RGBA are converted) is resized with
Pillow to the model's input size. A file that cannot be read as an image gets an error line
and the others are still classified; the exit status is then 1.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

HELP = "classify image files with a trained checkpoint"
TOP_K = 3


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, metavar="C",
                        help="a checkpoint file, or a training output folder holding checkpoint.msgpack")
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="PNG or JPEG files")  # fmt: skip


def read_image(path: Path, input_shape: tuple[int, int, int]) -> np.ndarray:
    """(H, W, C) uint8 pixels of `path`, converted to C channels and resized to H x W.

    Raises OSError/ValueError (from Pillow) for a missing, empty or non-image file.
    """
    from PIL import Image

    height, width, channels = input_shape
    with Image.open(path) as image:
        image = image.convert("L" if channels == 1 else "RGB").resize((width, height), Image.BILINEAR)
        return np.asarray(image, dtype=np.uint8).reshape(height, width, channels)


def run(args: argparse.Namespace) -> int:
    import jax

    from jaxcifar import checkpoint, train
    from jaxcifar.data.preprocess import to_float

    saved = checkpoint.load(args.checkpoint)
    config = saved.config
    num_classes = len(saved.class_names)
    params = checkpoint.restore(saved, train.state_template(config, saved.input_shape, num_classes)).params
    model = train.build_model(config, saved.input_shape, num_classes)

    @jax.jit
    def probabilities(images):
        return jax.nn.softmax(model.apply(params, to_float(images)))

    failures = 0
    for name in args.images:
        try:
            pixels = read_image(Path(name), saved.input_shape)
        except (OSError, ValueError) as error:
            print(f"jaxcifar predict: error: {name}: not a readable image ({error})", file=sys.stderr)
            failures += 1
            continue
        probs = np.asarray(probabilities(pixels[None]))[0]
        top = np.argsort(-probs)[:TOP_K]
        ranked = ", ".join(f"{saved.class_names[i]} {probs[i]:.3f}" for i in top)
        print(f"{name}: {ranked}")
    return 1 if failures else 0
