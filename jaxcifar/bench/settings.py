"""What a benchmark run measures. Light to import (no JAX), so the CLI takes its defaults."""

from __future__ import annotations

import dataclasses
from typing import Any

from jaxcifar.bench.timing import TimingBudget
from jaxcifar.config import DTYPES, MODELS
from jaxcifar.errors import ConfigError

DEFAULT_BATCH_SIZES = (4, 32, 128, 512, 2048)
DEFAULT_EPOCH_BATCH_SIZES = (4, 512)
DEFAULT_EPOCH_IMAGES = 2048
TIMED_EPOCH_MODES = ("loop", "scan")


@dataclasses.dataclass(frozen=True)
class Settings:
    """What one run measures.

    `reference` adds the machine's matmul roof (XLA and NumPy), the NumPy scratch MLP (vs its
    jitted JAX twin) and the PyTorch seed CNN
    (eager; also torch.compile'd with `torch_compile`, which compiles for minutes on a small
    CPU) with `torch_threads` intra-op threads (None: torch's default). Epochs of
    `epoch_images` images run at each of `epoch_batch_sizes` in both modes (0 images: none).
    """

    models: tuple[str, ...] = MODELS
    batch_sizes: tuple[int, ...] = DEFAULT_BATCH_SIZES
    dtypes: tuple[str, ...] = DTYPES
    budget: TimingBudget = TimingBudget()
    reference: bool = True
    torch_compile: bool = False
    torch_threads: int | None = None
    epoch_images: int = DEFAULT_EPOCH_IMAGES
    epoch_batch_sizes: tuple[int, ...] = DEFAULT_EPOCH_BATCH_SIZES

    def __post_init__(self) -> None:
        for flag, given in (("--torch-compile", self.torch_compile),
                            ("--torch-threads", self.torch_threads is not None)):  # fmt: skip
            if given and not self.reference:  # it would be ignored without a word
                raise ConfigError(
                    f"{flag} sets up the PyTorch reference, which --no-reference turns off; "
                    "drop one of them"
                )
            if given and "cnn" not in self.models:  # the reference is the seed CNN alone
                raise ConfigError(
                    f"{flag} sets up the PyTorch reference of the CNN, which --models "
                    f"{' '.join(self.models)} does not time; add cnn, or drop {flag}"
                )
        images = self.epoch_images
        too_large = [size for size in self.epoch_batch_sizes if images and size > images]
        if too_large:
            raise ConfigError(
                f"--epoch-images {self.epoch_images} is smaller than --epoch-batch-sizes "
                f"{', '.join(map(str, too_large))}: an epoch needs at least one full batch"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
