"""A small in-memory dataset and configuration shared by the training and checkpoint tests."""

import numpy as np

from jaxcifar.config import RunConfig
from jaxcifar.data.dataset import Dataset

CLASSES = ("dark", "mid", "light")


def tiny_dataset(
    n: int, seed: int = 0, size: int = 8, classes: tuple[str, ...] = CLASSES
) -> Dataset:
    """Grayscale size x size images whose class is their brightness band: easy to learn.
    The bands, one a class, are centred from 40 to 215 (40, 128, 215 for three)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(classes), n).astype(np.int32)
    base = np.linspace(40, 215, len(classes)).round()[labels][:, None, None, None]
    noise = rng.integers(-30, 31, (n, size, size, 1))
    return Dataset((base + noise).astype(np.uint8), labels, classes, source="synthetic")


MLP = RunConfig(model="mlp", dataset="mnist", mlp_hidden=(16,), mlp_activation="relu",
                optimizer="adam", lr=0.01, batch_size=16, epochs=3)  # fmt: skip
