"""The PyTorch reference: the seed notebook's CNN and training step, eager and torch.compile.

torch is an optional extra (`pip install jaxcifar[bench]`) imported only inside these
functions; `torch_missing()` says why the reference cannot run when it is absent.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np

from jaxcifar.bench.rows import Row, step_row
from jaxcifar.bench.timing import TimingBudget, time_steps
from jaxcifar.config import RECIPES
from jaxcifar.models import cnn

if TYPE_CHECKING:
    import torch


def torch_missing() -> str | None:
    """None when the reference can run on the kind of device JAX runs on, else why not (for
    the results file): torch does not import, or JAX is on a GPU and torch has no CUDA."""
    try:
        import torch
    except ImportError as error:
        return f"torch is not installed ({error}); install the extra: pip install 'jaxcifar[bench]'"
    if _jax_on_gpu() and not torch.cuda.is_available():
        return (
            "JAX runs on a GPU but this torch build has no CUDA: the reference would run elsewhere"
        )
    return None


def _jax_on_gpu() -> bool:
    import jax

    return jax.default_backend() == "gpu"


def torch_device() -> str:
    """The torch device of the reference: "cuda" where JAX runs on a GPU, else "cpu"."""
    return "cuda" if _jax_on_gpu() else "cpu"


def build_seed_cnn(
    input_shape: tuple[int, int, int] = (32, 32, 3), num_classes: int = 10
) -> torch.nn.Sequential:
    """The seed CNN as a torch.nn.Sequential: the architecture of `jaxcifar.models.cnn`
    (same layer sizes, ReLUs, 2x2 max-pools, dropout 0.25), in PyTorch's NCHW layout."""
    import torch.nn as nn

    height, width, channels = input_shape
    c1, c2 = cnn.CONV_CHANNELS
    widths = (cnn.flat_size(height, width), *cnn.HIDDEN)
    dense = []
    for n_in, n_out in zip(widths[:-1], widths[1:]):
        dense += [nn.Linear(n_in, n_out), nn.ReLU()]
    return nn.Sequential(
        nn.Conv2d(channels, c1, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Dropout(cnn.DROPOUT_RATE), nn.Flatten(),
        *dense, nn.Linear(widths[-1], num_classes),
    )  # fmt: skip


def measure_torch_cnn(
    images: np.ndarray,
    labels: np.ndarray,
    budget: TimingBudget,
    *,
    compile: bool,
    threads: int | None = None,
) -> Row:
    """Time the seed notebook's step (zero_grad, forward, cross-entropy, backward, SGD
    momentum step) in training mode (dropout on), eager or with the model torch.compile'd,
    on `torch_device()`; on CUDA each timed step ends with a synchronize, as JAX's steps end
    with block_until_ready.

    Args:
      images: (B, H, W, C) uint8; normalised to [-1, 1] and made NCHW once, up front.
      labels: (B,) int.
      threads: torch's intra-op thread count for this and later calls (None: leave it).
        On a CPU that other processes keep busy, OpenMP threads that wait for each other
        spin and yield, and a 2-thread step can take 50x its 1-thread time.
    With `compile`, the first call (where torch.compile traces and builds its kernels) is
    reported as `compile_seconds`; exceptions from torch.compile propagate to the caller.
    """
    import torch

    if threads is not None:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    device = torch_device()
    x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))).to(device)
    x = x.float() / 127.5 - 1.0
    y = torch.from_numpy(labels.astype(np.int64)).to(device)
    model = build_seed_cnn(images.shape[1:]).train().to(device)
    forward = torch.compile(model, dynamic=False) if compile else model
    seed_recipe = RECIPES["seed"]  # SGD with momentum, no weight decay
    optimizer = torch.optim.SGD(
        model.parameters(), lr=seed_recipe.lr, momentum=seed_recipe.momentum
    )
    loss_fn = torch.nn.CrossEntropyLoss()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss_fn(forward(x), y).backward()
        optimizer.step()
        if device == "cuda":
            torch.cuda.synchronize()

    compile_seconds = None
    if compile:
        start = time.perf_counter()
        step()
        compile_seconds = time.perf_counter() - start
    seconds = time_steps(step, budget)
    return step_row(
        "torch-compile" if compile else "torch", "cnn", "train_step", len(images), "float32",
        images.shape[1:], seconds, compile_seconds=compile_seconds,
        notes=f"{device}, {torch.get_num_threads()} intra-op threads",
    )  # fmt: skip
