"""benchmarks/triton_resources.py's capture of the kernels' Triton IR (compiling it needs the
`triton` package, which is no test dependency; capturing needs no GPU)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import triton_resources  # noqa: E402


def test_every_kernel_of_the_step_is_captured_with_its_grid_and_settings():
    kernels = triton_resources.kernel_irs(batch=4)
    names = [kernel["kernel"] for kernel in kernels]
    assert names == ["conv_relu_pool", "conv_relu_pool", "head_train_step",
                     "head_first_kernel_step", "conv_backward", "conv_updates"]  # fmt: skip
    # 256 and 64 pooled positions in blocks of 16; the head is one program, then one per 32
    # of fc1's 1024 rows; 256 positions again; one program per tap of each layer.
    assert [kernel["grid"] for kernel in kernels] == [(64,), (16,), (), (32,), (64,), (18,)]
    # Each kernel's own settings, not one for all: the head's training step asks for 8 warps
    # (pallas_head.py), the rest for triton_call's 4; none sets stages (Triton's default, 3).
    assert [kernel["warps"] for kernel in kernels] == [4, 4, 8, 4, 4, 4]
    assert all(kernel["stages"] == 3 for kernel in kernels)
    assert all(kernel["ir"].lstrip().startswith("module") and "tt.func" in kernel["ir"]
               for kernel in kernels)  # fmt: skip
