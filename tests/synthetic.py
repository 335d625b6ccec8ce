"""A small in-memory dataset and configuration shared by the training and checkpoint tests."""

import numpy as np

from jaxcifar.config import RunConfig
from jaxcifar.data.dataset import Dataset

CLASSES = ("dark", "mid", "light")


def tiny_dataset(n: int, seed: int = 0, size: int = 8) -> Dataset:
    """Grayscale size x size images whose class is their brightness band: easy to learn."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n).astype(np.int32)
    base = np.array([40, 128, 215])[labels][:, None, None, None]
    noise = rng.integers(-30, 31, (n, size, size, 1))
    return Dataset((base + noise).astype(np.uint8), labels, CLASSES, source="synthetic")


MLP = RunConfig(model="mlp", dataset="mnist", mlp_hidden=(16,), mlp_activation="relu",
                optimizer="adam", lr=0.01, batch_size=16, epochs=3)  # fmt: skip
