"""The `airbench` package (0.1.8) on a CPU, for the scripts that run it beside our recipe.

airbench builds its network in float16 on cuda:0, loads its data onto a GPU, and times with
CUDA events. `airbench_on_cpu` makes `Module.half` and `Module.cuda` no-ops (so the network is
float32 on the CPU), stubs the CUDA timers, and replaces the test loader its `train` builds
from cifar10/test.pt (unused when not verbose). torchvision, which airbench imports for
downloading CIFAR-10 and for `Normalize`, is replaced by a stub when it does not import (a
CPU-only torch often lacks a matching torchvision). Importing this module needs neither
torch nor airbench (`airbench_missing` says which is missing); its functions need both.
"""

from __future__ import annotations

import contextlib
import importlib.util
import sys
import types
from collections.abc import Iterator
from unittest import mock


def airbench_missing() -> str | None:
    """Why airbench94 cannot run here, or None when it can."""
    if importlib.util.find_spec("torch") is None:
        return "torch is not installed"
    if importlib.util.find_spec("airbench") is None:
        return "the airbench package is not installed (pip install --no-deps airbench)"
    return None


def import_airbench() -> tuple[types.ModuleType, types.ModuleType]:
    """(airbench.utils, airbench.lib_airbench94), with torchvision stubbed if it fails."""
    import torch

    try:
        import torchvision  # noqa: F401
    except Exception:  # an ABI mismatch raises RuntimeError, not ImportError
        for name in [m for m in sys.modules if m.startswith("torchvision")]:
            del sys.modules[name]
        stub, transforms = types.ModuleType("torchvision"), types.ModuleType("transforms")

        def normalize(mean, std):
            mean, std = torch.as_tensor(mean), torch.as_tensor(std)
            def apply(x):  # on the images' device and dtype (CUDA float16 on a GPU)
                shape = (-1, 1, 1)
                return (x - mean.to(x).view(shape)) / std.to(x).view(shape)

            return apply

        transforms.Normalize = normalize
        stub.transforms = transforms
        sys.modules.update({"torchvision": stub, "torchvision.transforms": transforms})
    from airbench import lib_airbench94, utils

    return utils, lib_airbench94


def net_widths(widths: tuple[int, ...]) -> dict[str, int]:
    """Our three conv-block widths in make_net94's form: {"block1": w1, ...}."""
    return dict(zip(("block1", "block2", "block3"), widths, strict=True))


@contextlib.contextmanager
def airbench_on_cpu(utils: types.ModuleType) -> Iterator[None]:
    """airbench's model building and `train` on the CPU in float32: no half(), no cuda(), no
    CUDA timers, no test loader (its `train` builds one from cifar10/test.pt; unused when
    not verbose)."""
    import torch

    class Timer:
        def __init__(self, **_):
            pass

        def record(self):
            pass

        def elapsed_time(self, _):
            return 0.0

    with contextlib.ExitStack() as stack:
        stack.enter_context(mock.patch.object(torch.nn.Module, "half", lambda self: self))
        stack.enter_context(mock.patch.object(torch.nn.Module, "cuda", lambda self, *a: self))
        stack.enter_context(mock.patch.object(torch.cuda, "Event", Timer))
        stack.enter_context(mock.patch.object(torch.cuda, "synchronize", lambda: None))
        stack.enter_context(without_test_loader(utils))
        yield


@contextlib.contextmanager
def without_test_loader(utils: types.ModuleType) -> Iterator[None]:
    """airbench's `train` with no test loader: it builds one from cifar10/test.pt on every
    call (about 0.1 s for 10,000 images) and uses it only when verbose, while its accuracy is
    measured afterwards with the loader the caller built once, as ours is."""
    with mock.patch.object(utils, "CifarLoader", lambda *a, **k: None):
        yield
