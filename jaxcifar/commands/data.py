"""Inspect a dataset: `info` prints its source, split sizes, image shape and per-class counts;
`show` writes a labelled grid of sample training images as a PNG."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from jaxcifar.commands.arguments import (
    add_data_arguments, check_writable_file, int_in_range, seed_int,
)
from jaxcifar.errors import ConfigError

if TYPE_CHECKING:
    from jaxcifar.data import Dataset

HELP = "show a dataset's sizes and class counts, or a grid of sample images"
# The most images `show` draws: a 20x20 grid of 2590x2887 pixels, still readable, drawn in 9 s
# and 430 MB (CIFAR-10, 2-core CPU). The figure's cost grows with its subplots: 100,000 ran
# for 10 minutes and grew to 18 GB without finishing.
MAX_COUNT = 400


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    info = actions.add_parser(
        "info",
        help="source, split sizes, image shape and per-class counts",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_data_arguments(info)
    show = actions.add_parser(
        "show",
        help="a labelled grid of sample training images, as a PNG",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_data_arguments(show)
    show.add_argument(
        "--count", type=int_in_range(1, MAX_COUNT), default=16,
        help=f"how many images, 1..{MAX_COUNT}; the whole split when it has fewer",
    )  # fmt: skip
    show.add_argument("--seed", type=seed_int, default=0, help="which images: the sample's seed")
    show.add_argument(
        "--out", type=Path, required=True, metavar="PNG", help="the image to write, a .png file"
    )


def run(args: argparse.Namespace) -> int:
    if args.action == "show":  # before the data is read, not after
        if args.out.is_dir():  # told only that its name lacked .png
            raise ConfigError(f"--out {args.out} is a folder; expected a .png file name, such "
                              f"as {args.out / 'grid.png'}")  # fmt: skip
        if args.out.suffix.lower() != ".png":
            raise ConfigError(f"--out {args.out}: expected a file name ending in .png")
        check_writable_file(args.out)
    from jaxcifar.data import load

    train = load(args.dataset, "train", data_dir=args.data_dir)
    if args.action == "info":
        print(format_info(train, load(args.dataset, "test", data_dir=args.data_dir)))
    else:
        sample = train.subset(args.count, seed=args.seed)
        write_grid(args.out, sample)
        print(f"wrote {args.out}: {len(sample)} of {len(train)} training images")
    return 0


def format_info(train: Dataset, test: Dataset) -> str:
    """A small text table: source, image shape, per-class and total counts of both splits."""
    import numpy as np

    width = max(14, *(_display_width(name) + 2 for name in train.class_names))
    lines = [
        f"source       {train.source}",
        # Spelled as other messages give shapes: "30x22 pixels" would read width first.
        f"image shape  (H, W, C) {train.images.shape[1:]} uint8",
        f"{_pad('class', width)}{'train':>8}{'test':>8}",
    ]
    counts = [np.bincount(split.labels, minlength=train.num_classes) for split in (train, test)]
    for name, n_train, n_test in zip(train.class_names, *counts):
        lines.append(f"{_pad(name, width)}{n_train:>8}{n_test:>8}")
    lines.append(f"{_pad('total', width)}{len(train):>8}{len(test):>8}")
    return "\n".join(lines)


def _display_width(text: str) -> int:
    """The columns `text` takes in a terminal: 2 for a wide (CJK) character, 0 for a combining
    accent or a zero-width joiner, 1 for others. `len` put a Chinese class name's counts out of
    line with the other rows'."""
    import unicodedata

    def columns(char: str) -> int:
        if unicodedata.combining(char) or unicodedata.category(char) == "Cf":
            return 0
        return 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1

    return sum(columns(char) for char in text)


def _pad(text: str, width: int) -> str:
    """`text` with spaces after it to fill `width` terminal columns."""
    return text + " " * (width - _display_width(text))


def write_grid(path: Path, sample: Dataset) -> None:
    """Draw `sample` as a grid of its images, each titled with its class name."""
    from jaxcifar.plots import plot_image_grid

    plot_image_grid(path, sample.images, [sample.class_names[label] for label in sample.labels])
