"""The JAX cases: the real training step, its scratch-recipe MLP twin, and whole epochs.

The training step is `jaxcifar.train.make_train_step` (forward, cross-entropy, backward and
the optimizer update of `jaxcifar train`'s default recipe, SGD lr 0.001 momentum 0.9, with
dropout on), compiled ahead of time so compilation is timed apart from the first run.
Inputs are synthetic: random pixels and labels cost the same to train on as real ones.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxcifar import models, parallel, train
from jaxcifar.bench import numpy_reference
from jaxcifar.bench.rows import Row, step_row
from jaxcifar.bench.timing import TimingBudget, time_steps
from jaxcifar.bench.xla_cost import flops, program_memory_bytes
from jaxcifar.config import MLP_LAYER_SIZES, RunConfig
from jaxcifar.compiling import compile_timed
from jaxcifar.data.dataset import CLASS_NAMES, IMAGE_SHAPES, Dataset
from jaxcifar.scratch import scale_pixels

# Each model runs on the data it is built for: the seed CNN on CIFAR-10 images, the
# 784-500-50-10 MLP on MNIST-sized ones (the shape of the NumPy scratch network).
MODEL_DATASETS = {"cnn": "cifar10", "mlp": "mnist"}


def synthetic_dataset(model: str, size: int, seed: int = 0) -> Dataset:
    """`size` random uint8 images and labels in the shape of `model`'s dataset."""
    name = MODEL_DATASETS[model]
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (size, *IMAGE_SHAPES[name]), dtype=np.uint8)
    labels = rng.integers(0, len(CLASS_NAMES[name]), size).astype(np.int32)
    return Dataset(images, labels, CLASS_NAMES[name], source=f"synthetic {name}")


def run_config(model: str, batch_size: int, dtype: str = "float32") -> RunConfig:
    """`jaxcifar train`'s default recipe for `model` on its dataset at `batch_size`."""
    return RunConfig(model=model, dataset=MODEL_DATASETS[model], batch_size=batch_size, dtype=dtype)


def measure_train_step(model: str, batch_size: int, dtype: str, budget: TimingBudget) -> Row:
    """Compile and time `jaxcifar train`'s jitted step for `model` at `batch_size`, computing
    in `dtype` ("float32" or "bfloat16"; parameters and optimizer state stay float32).

    The batch lives on the devices, split as the step takes it (`parallel.batch_sharding`),
    so the time is the step, not a host-to-device copy or a reshard.
    Every timed step reuses one dropout key: the mask costs the same whatever the key, and
    deriving a fresh key each step would add a second dispatch to the time.
    """
    dataset = synthetic_dataset(model, batch_size)
    config = run_config(model, batch_size, dtype)
    setup = train.build_setup(config, dataset)
    state = train.init_state(config, setup)
    batch = jax.device_put(
        (dataset.images, dataset.labels), parallel.batch_sharding(parallel.data_mesh())
    )
    key = jax.random.key(0)
    compiled = compile_timed(train.make_train_step(setup, dtype=dtype), state, batch, key)
    start = time.perf_counter()
    state, _ = jax.block_until_ready(compiled.executable(state, batch, key))
    first_run_seconds = time.perf_counter() - start

    def step() -> None:
        nonlocal state
        state, _ = jax.block_until_ready(compiled.executable(state, batch, key))

    seconds = time_steps(step, budget)
    return step_row(
        "jax", model, "train_step", batch_size, dtype, dataset.images.shape[1:], seconds,
        compile_seconds=compiled.compile_seconds, lower_seconds=compiled.lower_seconds,
        first_run_seconds=first_run_seconds, flops_per_step=flops(compiled.executable),
        peak_memory_bytes=program_memory_bytes(compiled.executable),
    )  # fmt: skip


def measure_scratch_twin(images: np.ndarray, labels: np.ndarray, budget: TimingBudget) -> Row:
    """Time the jitted JAX twin of the NumPy scratch step: the same 784-500-50-10 sigmoid
    network (`models.mlp`, a sigmoid on its outputs), squared error on one-hot targets and
    plain SGD, on the same float32 inputs in [0, 1]. Compare with numpy_reference.

    Args:
      images: (B, 28, 28, 1) uint8.  labels: (B,) int in [0, 10).
    """
    model = models.build("mlp", images.shape[1:], MLP_LAYER_SIZES[-1])
    params = jax.jit(model.init)(jax.random.key(0))
    x = jnp.asarray(scale_pixels(images, np.float32))
    y_onehot = jax.nn.one_hot(labels, MLP_LAYER_SIZES[-1])

    def squared_error(params, x, y_onehot):
        outputs = jax.nn.sigmoid(model.apply(params, x))
        return 0.5 * jnp.mean(jnp.sum((outputs - y_onehot) ** 2, axis=1))

    def sgd_step(params, x, y_onehot):
        grads = jax.grad(squared_error)(params, x, y_onehot)
        return jax.tree.map(lambda p, g: p - numpy_reference.LEARNING_RATE * g, params, grads)

    compiled = compile_timed(jax.jit(sgd_step), params, x, y_onehot)

    def step() -> None:
        nonlocal params
        params = jax.block_until_ready(compiled.executable(params, x, y_onehot))

    seconds = time_steps(step, budget)
    return step_row(
        "jax", "mlp", "scratch_step", len(images), "float32", images.shape[1:], seconds,
        compile_seconds=compiled.compile_seconds, lower_seconds=compiled.lower_seconds,
        flops_per_step=flops(compiled.executable),
        peak_memory_bytes=program_memory_bytes(compiled.executable),
    )  # fmt: skip


def measure_epoch(model: str, batch_size: int, mode: str, num_images: int) -> Row:
    """Time one float32 epoch of `num_images` synthetic images through `jaxcifar train`'s
    epoch runner in `mode` ("loop": a Python loop of jitted steps fed from host memory;
    "scan": one compiled `lax.scan` over the epoch with the data on the device), warm: the
    second epoch, as the first compiles each program and is its first execution, which the
    step rows' warm-up leaves out too."""
    dataset = synthetic_dataset(model, num_images)
    config = run_config(model, batch_size)
    setup = train.build_setup(config, dataset)
    state = train.init_state(config, setup)
    runner = train.make_epoch_runner(mode, config, setup, dataset)
    state = jax.block_until_ready(runner.run(state, 1, lambda *_: None))
    start = time.perf_counter()
    jax.block_until_ready(runner.run(state, 2, lambda *_: None))
    epoch_seconds = time.perf_counter() - start
    mean_step = epoch_seconds / runner.steps
    return Row(
        "jax", model, f"epoch_{mode}", batch_size, "float32", dataset.images.shape[1:],
        {"median": mean_step, "p10": mean_step, "p90": mean_step}, steps_timed=runner.steps,
        compile_seconds=runner.compile_seconds, epoch_seconds=epoch_seconds,
        steps_per_epoch=runner.steps, notes="step_seconds: the epoch's mean step",
    )  # fmt: skip
