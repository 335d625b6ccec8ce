"""Where the seed CNN's jitted train step spends its time on CPU, and what makes it faster.

Runs `jaxcifar.train.make_train_step` with the model's apply function rebuilt from
alternative pieces (convolution as lax.conv in NHWC or NCHW or as an im2col matmul, per
layer; max-pool as reshape+max or lax.reduce_window) and times each variant with the
benchmark library, all in one process so they share the machine's state. XLA flags and
thread counts act per process: run the script once per setting, e.g.

    python benchmarks/cnn_variants.py --batch-sizes 32 128
    XLA_FLAGS=--xla_cpu_use_xnnpack=true python benchmarks/cnn_variants.py
    taskset -c 0 python benchmarks/cnn_variants.py
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
from jax import lax

from bench_paths import run_script
from jaxcifar import models, train
from jaxcifar.bench import jax_cases
from jaxcifar.bench.timing import TimingBudget, percentiles, time_steps
from jaxcifar.commands.arguments import positive_float, positive_int
from jaxcifar.compiling import compile_timed
from jaxcifar.models import cnn, layers


def pool_reduce_window(x):
    """Max over 2x2 windows with lax.reduce_window: its gradient is XLA's select-and-scatter."""
    return lax.reduce_window(x, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")


def conv_im2col(params, x, dtype):
    """The 3x3 'same' convolution as one matmul: the nine shifted copies of the zero-padded
    input side by side, (N, H, W, 9 * C_in), times the kernel as (9 * C_in, C_out)."""
    height, width = x.shape[1:3]
    padded = jnp.pad(x.astype(dtype), ((0, 0), (1, 1), (1, 1), (0, 0)))
    windows = [padded[:, i : i + height, j : j + width] for i in range(3) for j in range(3)]
    kernel = params["kernel"].astype(dtype)
    y = jnp.concatenate(windows, -1) @ kernel.reshape(-1, kernel.shape[-1])
    return y + params["bias"].astype(dtype)


def conv_plain(params, x, dtype):
    """`lax.conv_general_dilated` in NHWC and nothing else: XLA's own gradients throughout."""
    y = lax.conv_general_dilated(
        x.astype(dtype), params["kernel"].astype(dtype), (1, 1), "SAME",
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )  # fmt: skip
    return y + params["bias"].astype(dtype)


def conv_nchw(params, x, dtype):
    """The same convolution computed in PyTorch's layout (transposes in and out)."""
    y = lax.conv_general_dilated(
        x.transpose(0, 3, 1, 2).astype(dtype), params["kernel"].astype(dtype).transpose(3, 2, 0, 1),
        (1, 1), "SAME", dimension_numbers=("NCHW", "OIHW", "NCHW"),
    )  # fmt: skip
    return y.transpose(0, 2, 3, 1) + params["bias"].astype(dtype)


def make_apply(convs, pool):
    """cnn.apply with its convolutions swapped for `convs` (one function for both layers, or
    a tuple, one per layer) and its pooling for `pool`."""
    if callable(convs):
        convs = (convs,) * len(cnn.CONV_CHANNELS)

    def apply(params, x, *, train=False, rng=None, dtype=jnp.float32):
        h = x
        for i, conv in enumerate(convs, start=1):
            h = pool(jax.nn.relu(conv(params[f"conv{i}"], h, dtype)))
        h = layers.dropout(h, cnn.DROPOUT_RATE, train=train, rng=rng)
        return cnn.head(params, h.reshape(h.shape[0], -1), dtype=dtype)

    return apply


VARIANTS = {
    # The model as it is: lax.conv with canonical gradients on a CPU, reshape+max pooling.
    "model": (layers.conv, layers.max_pool_2x2),
    "im2col both": (conv_im2col, layers.max_pool_2x2),
    "im2col conv1": ((conv_im2col, layers.conv), layers.max_pool_2x2),
    "NCHW conv both": (conv_nchw, layers.max_pool_2x2),
    "reduce_window pool": (layers.conv, pool_reduce_window),
    # The plain step `../shared/MEASURED.md` timed (lax.conv, reduce_window pooling, compiled
    # with XLA's default fusions), with this project's dropout mask: same values as the model,
    # so the losses still agree; finding 2 measured the threefry mask it replaced at the same
    # step time.
    "plain": (conv_plain, pool_reduce_window),
}


def measure(name: str, batch_size: int, budget: TimingBudget, losses: dict) -> dict:
    """Compile and time the train step of variant `name` at `batch_size` (float32).

    The first step's loss must match that of the first variant measured with the same batch
    size (`losses` remembers them): every variant computes the same function.
    """
    conv, pool = VARIANTS[name]
    dataset = jax_cases.synthetic_dataset("cnn", batch_size)
    config = jax_cases.run_config("cnn", batch_size)
    base = train.build_setup(config, dataset)
    setup = base._replace(model=models.Model(base.model.init, make_apply(conv, pool)))
    state = train.init_state(config, setup)
    batch = jax.device_put((dataset.images, dataset.labels))
    key = jax.random.key(0)
    step = train.make_train_step(setup)
    compiled = compile_timed(step, state, batch, key, xla_defaults=name == "plain")
    loss = float(compiled.executable(state, batch, key)[1]["loss"])
    expected = losses.setdefault(batch_size, loss)
    assert abs(loss - expected) < 1e-4 * abs(expected), (name, loss, expected)

    def step():
        nonlocal state
        state, _ = jax.block_until_ready(compiled.executable(state, batch, key))

    return {"compile_s": compiled.compile_seconds, **percentiles(time_steps(step, budget))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-sizes", nargs="+", type=positive_int, default=[32, 128])
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--seconds", type=positive_float, default=2.0, help="timing per case")
    args = parser.parse_args()
    budget = TimingBudget(warmup=1, min_steps=5, min_seconds=args.seconds)
    print("| variant | batch | compile s | median ms | p10 ms | p90 ms |")
    print("|---|---:|---:|---:|---:|---:|")
    losses: dict = {}
    for batch_size in args.batch_sizes:
        for name in args.variants:
            r = measure(name, batch_size, budget, losses)
            print(
                f"| {name} | {batch_size} | {r['compile_s']:.2f} | {r['median'] * 1e3:.2f} "
                f"| {r['p10'] * 1e3:.2f} | {r['p90'] * 1e3:.2f} |", flush=True,
            )  # fmt: skip


if __name__ == "__main__":
    run_script(main)
