"""jaxcifar's speedrun against the `airbench` package's own code, on the same images and weights.

Usage: python benchmarks/airbench_parity.py [--data-dir ../shared/data] [--images 640]
       [--batch-size 64] [--epochs 2.7] [--out benchmarks/results]

Both sides start from the same weights (ours, loaded into airbench's network) and train on
the same images in the same order with the same alternating flips, for a few epochs of a
small training set, airbench through its own `train` function (optimizer groups, lr
schedule, whitening-bias freeze, lookahead). Random translation is off on both sides (our
translation's equality with reflect-padded crops is a unit test). Compared, in float32 on
the CPU:
- the recipe's hyperparameters against airbench94's `hyp`;
- the whitening kernel from the same images, up to each eigenvector's sign: ours and
  airbench's against a float64 eigendecomposition (float32 rotates the eigenvectors of the
  two smallest, nearly equal, eigenvalues on both sides alike);
- logits, BN running statistics and gradients of one training-mode step;
- every parameter and BN statistic after the whole run (the lookahead's last reset included:
  the default 27 steps end 2 steps after its last update);
- test-time-augmented logits (level 2) of the trained weights.
Writes <out>/airbench-parity.{json,md}; exits 1 if a check is outside its tolerance.

Needs torch and airbench (`pip install --no-deps airbench`), run on the CPU by
`airbench_cpu.py`.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import types
from pathlib import Path
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np

try:
    import torch
except ModuleNotFoundError:  # --help needs no torch; main says what is missing
    pass

from airbench_cpu import airbench_missing, airbench_on_cpu, import_airbench, net_widths
from bench_paths import RESULTS, SHARED_DATA, run_script
from jaxcifar.atomic import atomic_write_text
from jaxcifar.commands.arguments import positive_float, positive_int, seed_int
from jaxcifar.data import load
from jaxcifar.data.preprocess import channel_stats, standardize
from jaxcifar.errors import ConfigError
from jaxcifar.speedrun import net, optimizer, whitening
from jaxcifar.speedrun import recipe as recipes
from jaxcifar.speedrun import train as speedrun

# A check passes when our float32 result is within SLACK times airbench's own float32
# difference from its float64 result, plus FLOOR: float32 rounding, and which of two tied
# maxima a pool picks, move both alike.
SLACK, FLOOR = 2.0, 1e-5


def nchw(x: np.ndarray | jax.Array) -> torch.Tensor:
    """(N, H, W, C) -> torch (N, C, H, W) float32."""
    return torch.from_numpy(np.asarray(x, np.float32)).permute(0, 3, 1, 2).contiguous()


def load_weights(model: torch.nn.Sequential, params: net.Params, stats: net.BatchStats) -> None:
    """Copy our (params, batch_stats) into airbench's nn.Sequential (HWIO -> OIHW)."""

    def put(tensor: torch.Tensor, value) -> None:
        tensor.data.copy_(torch.from_numpy(np.array(value, np.float32)))

    put(model[0].weight, np.transpose(params["whiten"]["kernel"], (3, 2, 0, 1)))
    put(model[0].bias, params["whiten"]["bias"])
    for i, group in enumerate(model[2:5], start=1):
        block, block_stats = params[f"block{i}"], stats[f"block{i}"]
        for j in (1, 2):
            put(getattr(group, f"conv{j}").weight,
                np.transpose(block[f"conv{j}"]["kernel"], (3, 2, 0, 1)))  # fmt: skip
            norm = getattr(group, f"norm{j}")
            put(norm.bias, block[f"norm{j}"]["bias"])
            put(norm.running_mean, block_stats[f"norm{j}"]["mean"])
            put(norm.running_var, block_stats[f"norm{j}"]["var"])
    put(model[7].weight, np.asarray(params["head"]["kernel"]).T)


def as_ours(model: torch.nn.Sequential, grads: bool = False) -> tuple[dict, dict]:
    """airbench's weights (or their gradients) and BN statistics as our trees (numpy)."""

    def get(tensor: torch.Tensor, transpose=None) -> np.ndarray | None:
        value = tensor.grad if grads else tensor.data
        if value is None:
            return None
        value = value.detach().numpy()
        return value if transpose is None else np.transpose(value, transpose)

    hwio = (2, 3, 1, 0)
    params = {"whiten": {"kernel": get(model[0].weight, hwio), "bias": get(model[0].bias)}}
    stats = {}
    for i, group in enumerate(model[2:5], start=1):
        block, block_stats = {}, {}
        for j in (1, 2):
            norm = getattr(group, f"norm{j}")
            block[f"conv{j}"] = {"kernel": get(getattr(group, f"conv{j}").weight, hwio)}
            block[f"norm{j}"] = {"bias": get(norm.bias)}
            block_stats[f"norm{j}"] = {"mean": norm.running_mean.numpy(),
                                       "var": norm.running_var.numpy()}  # fmt: skip
        params[f"block{i}"], stats[f"block{i}"] = block, block_stats
    params["head"] = {"kernel": get(model[7].weight, (1, 0))}
    return params, stats


def difference(ours, theirs) -> dict:
    """The largest |ours - theirs| over every leaf both trees hold, relative to the largest
    |theirs| of that leaf; and which leaf it was."""
    worst = {"relative": 0.0, "absolute": 0.0, "leaf": ""}
    flat_ours = dict(jax.tree_util.tree_leaves_with_path(ours))
    for path, value in jax.tree_util.tree_leaves_with_path(theirs):
        if value is None:
            continue
        a, b = np.asarray(flat_ours[path], np.float64), np.asarray(value, np.float64)
        absolute = float(np.abs(a - b).max())
        relative = absolute / max(float(np.abs(b).max()), 1e-30)
        if relative >= worst["relative"]:
            worst = {"relative": relative, "absolute": absolute,
                     "leaf": jax.tree_util.keystr(path)}  # fmt: skip
    return worst


class SameBatches:
    """airbench's loader interface (batch_size, epoch, len, iteration, images, normalize)
    yielding our run's batches: the epoch's order and alternating flip, standardised, NCHW,
    in `dtype`. `images` are already standardised (so `normalize` is the identity): airbench's
    whitening then sees exactly the float32 inputs ours does."""

    def __init__(self, images, labels, mean, std, orders, base_flip, batch_size):
        self.images = nchw(standardize(images, mean, std))
        self.normalize = lambda x: x
        self.dtype = torch.float32
        self._images, self._labels, self._mean, self._std = images, labels, mean, std
        self._orders, self._base_flip = orders, base_flip
        self.batch_size, self.epoch = batch_size, 0

    def __len__(self) -> int:
        return len(self._labels) // self.batch_size

    def __iter__(self):
        order = self._orders[self.epoch]
        flip = self._base_flip ^ (self.epoch % 2 == 1)
        self.epoch += 1
        for i in range(len(self)):
            index = order[i * self.batch_size : (i + 1) * self.batch_size]
            batch = np.where(flip[index, None, None, None], self._images[index, :, ::-1],
                             self._images[index])  # fmt: skip
            x = nchw(standardize(batch, self._mean, self._std)).to(self.dtype)
            yield x, torch.from_numpy(self._labels[index].astype(np.int64))


def float64_whitening(images: np.ndarray, size: int = 2) -> np.ndarray:
    """The whitening kernel (size, size, C, 2*size*size*C) of float images (N, H, W, C),
    computed in float64 with NumPy: the reference both float32 kernels are measured against."""
    n, height, width, channels = images.shape
    x = images.astype(np.float64)
    shifted = [x[:, dy : height - size + 1 + dy, dx : width - size + 1 + dx]
               for dy in range(size) for dx in range(size)]  # fmt: skip
    rows = np.stack(shifted, axis=3).reshape(-1, size * size * channels)
    eigenvalues, eigenvectors = np.linalg.eigh(rows.T @ rows / len(rows))
    scaled = eigenvectors[:, ::-1] / np.sqrt(eigenvalues[::-1] + whitening.EPS)
    return np.concatenate([scaled, -scaled], 1).reshape(size, size, channels, -1)


def sign_aligned(kernel: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """`kernel` with each eigenvector's sign (output channel k and its negative k + K/2)
    chosen to agree with `reference`'s."""
    half = kernel.shape[-1] // 2
    signs = np.sign((kernel[..., :half] * reference[..., :half]).sum(axis=(0, 1, 2)))
    return np.concatenate([kernel[..., :half] * signs, kernel[..., half:] * signs], -1)


def check_recipe(recipe: recipes.Recipe, hyp: dict) -> list[str]:
    """Names of the recipe fields that differ from airbench94's hyp."""
    opt, net_hyp = hyp["opt"], hyp["net"]
    pairs = {
        "epochs": (recipe.epochs, opt["train_epochs"]),
        "batch_size": (recipe.batch_size, opt["batch_size"]),
        "lr": (recipe.lr, opt["lr"]),
        "momentum": (recipe.momentum, opt["momentum"]),
        "weight_decay": (recipe.weight_decay, opt["weight_decay"]),
        "bias_scaler": (recipe.bias_scaler, opt["bias_scaler"]),
        "label_smoothing": (recipe.label_smoothing, opt["label_smoothing"]),
        "whiten_bias_epochs": (recipe.whiten_bias_epochs, opt["whiten_bias_epochs"]),
        "translate": (recipe.translate, hyp["aug"]["translate"]),
        "widths": (recipe.widths, tuple(net_hyp["widths"].values())),
        "bn_momentum": (recipe.bn_momentum, net_hyp["batchnorm_momentum"]),
        "output_scale": (recipe.output_scale, net_hyp["scaling_factor"]),
        "tta_level": (recipe.tta_level, net_hyp["tta_level"]),
    }
    return [name for name, (ours, theirs) in pairs.items() if ours != theirs]


def airbench_side(utils, lib94, recipe, initial, loader, test_set, dtype) -> dict:
    """airbench's own results in torch `dtype`, from our `initial` state's weights: one
    training-mode step on the loader's first batch, then its `train` run, then TTA logits."""

    def make_net() -> torch.nn.Sequential:
        with airbench_on_cpu(utils):
            model = lib94.make_net94(
                widths=net_widths(recipe.widths), batchnorm_momentum=recipe.bn_momentum
            )
        load_weights(model, initial.params, initial.batch_stats)
        return model.to(dtype)

    loader.dtype, loader.epoch = dtype, 0
    inputs, labels = next(iter(loader))
    loader.epoch = 0
    model = make_net().train()
    logits = model(inputs)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing, reduction="sum")
    loss_fn(logits, labels).backward()
    grads, stats = as_ours(model, grads=True)
    results = {"step_logits": logits.detach().numpy(), "step_bn_statistics": stats,
               "step_gradients": grads}  # fmt: skip
    # airbench's lookahead updates only tensors whose dtype is in (torch.half, torch.float);
    # for the float64 reference torch.float names float64 while its train() runs.
    with airbench_on_cpu(utils), mock.patch.object(torch, "float", dtype):
        trained = utils.train(
            loader, recipe.epochs, recipe.label_smoothing, recipe.lr, recipe.bias_scaler,
            recipe.momentum, recipe.weight_decay, recipe.whiten_bias_epochs, recipe.tta_level,
            make_net, run=0, verbose=False,
        )  # fmt: skip
    results["run_parameters"], results["run_bn_statistics"] = as_ours(trained)
    test_images = nchw(standardize(test_set.images, loader._mean, loader._std)).to(dtype)
    test_loader = types.SimpleNamespace(images=test_images, normalize=lambda x: x)
    results["tta_logits"] = utils.infer(trained, test_loader, tta_level=recipe.tta_level).numpy()
    return results


def our_side(recipe, plan, tx, initial, data, loader, test_set) -> dict:
    """The same quantities as `airbench_side`, from jaxcifar.speedrun's own functions."""
    loader.dtype, loader.epoch = torch.float32, 0
    inputs, labels = next(iter(loader))
    loader.epoch = 0
    nhwc, labels = jnp.asarray(inputs.permute(0, 2, 3, 1).numpy()), jnp.asarray(labels.numpy())
    params, stats = initial.params, initial.batch_stats
    grad_fn = jax.value_and_grad(speedrun.batch_loss, argnums=1, has_aux=True)
    (_, new_stats), grads = grad_fn(recipe, params, stats, nhwc, labels)
    logits, _ = net.apply(params, stats, nhwc, train=True, bn_momentum=recipe.bn_momentum,
                          output_scale=recipe.output_scale)  # fmt: skip
    results = {"step_logits": logits, "step_bn_statistics": new_stats, "step_gradients": grads}
    steps = {whiten_bias: jax.jit(functools.partial(
        speedrun.train_step, recipe, plan, tx, whiten_bias=whiten_bias
    )) for whiten_bias in (True, False)}  # fmt: skip
    state = initial
    for epoch in range(plan.epochs):
        order = speedrun.visit_order(state, epoch, data.labels.shape[0])
        step = steps[recipe.whiten_bias_trains(epoch)]
        for index in range(plan.epoch_steps(epoch)):
            state, _ = step(state, data, order, jnp.int32(epoch), jnp.int32(index))
    results["run_parameters"], results["run_bn_statistics"] = state.params, state.batch_stats
    results["tta_logits"] = speedrun.tta_logits(
        recipe, state.params, state.batch_stats, data.mean, data.std, jnp.asarray(test_set.images)
    )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=SHARED_DATA)
    parser.add_argument("--images", type=positive_int, default=640, help="training images")
    parser.add_argument("--batch-size", type=positive_int, default=64)
    parser.add_argument("--epochs", type=positive_float, default=2.7)
    parser.add_argument("--lr", type=positive_float, default=recipes.Recipe().lr)
    parser.add_argument("--seed", type=seed_int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if reason := airbench_missing():
        raise ConfigError(f"{reason}: this check runs airbench's own code beside ours")
    utils, lib94 = import_airbench()
    torch.manual_seed(args.seed)

    train_set = load("cifar10", "train", data_dir=args.data_dir).subset(args.images, seed=0)
    test_set = load("cifar10", "test", data_dir=args.data_dir).subset(200, seed=0)
    recipe = recipes.Recipe(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, translate=0, dtype="float32",
        whiten_bias_epochs=1, whiten_images=len(train_set),  # all of them: airbench's [:5000]
    )  # fmt: skip
    plan = recipes.plan(recipe, len(train_set))
    tx = optimizer.build_optimizer(recipe, plan.total_steps)
    mean, std = channel_stats(train_set.images)
    data = speedrun.DeviceData(*jax.device_put((train_set.images, train_set.labels, mean, std)))
    state = jax.jit(functools.partial(speedrun.init_state, recipe, tx, train_set.num_classes))(
        jax.random.key(args.seed), data
    )

    # Whitening: ours and airbench's (always float32) against float64, up to eigenvector signs.
    standardised = standardize(train_set.images, mean, std)
    layer = torch.nn.Conv2d(3, net.whiten_width(3), net.WHITEN_PATCH)
    utils.init_whitening_conv(layer, nchw(standardised))
    theirs = layer.weight.detach().numpy().transpose(2, 3, 1, 0)  # HWIO
    ours = np.asarray(whitening.whitening_kernel(jnp.asarray(standardised)))
    exact = float64_whitening(standardised)
    whitening_rows = {
        "ours": difference({"k": sign_aligned(ours, exact)}, {"k": exact}),
        "airbench": difference({"k": sign_aligned(theirs, exact)}, {"k": exact}),
    }
    # From here on both sides use airbench's kernel (its train() recomputes the same one from
    # the same images), so that the channels line up exactly.
    params = {**state.params, "whiten": {**state.params["whiten"], "kernel": jnp.asarray(theirs)}}
    initial = state._replace(params=params, lookahead=(params, state.batch_stats))
    orders = [np.asarray(speedrun.visit_order(initial, e, len(train_set)))
              for e in range(plan.epochs)]  # fmt: skip
    loader = SameBatches(train_set.images, train_set.labels, mean, std, orders,
                         np.asarray(initial.base_flip), recipe.batch_size)  # fmt: skip

    sides = {
        "reference": airbench_side(utils, lib94, recipe, initial, loader, test_set, torch.float64),
        "airbench": airbench_side(utils, lib94, recipe, initial, loader, test_set, torch.float32),
        "ours": our_side(recipe, plan, tx, initial, data, loader, test_set),
    }
    rows = {"whitening": whitening_rows}
    for key in sides["ours"]:
        rows[key] = {
            "ours": difference(sides["ours"][key], sides["reference"][key]),
            "airbench": difference(sides["airbench"][key], sides["reference"][key]),
            "ours_vs_airbench": difference(sides["ours"][key], sides["airbench"][key]),
        }
    predictions = {name: np.asarray(side["tta_logits"]).argmax(-1) for name, side in sides.items()}
    results = {
        "recipe_fields_unlike_airbench94": check_recipe(recipes.Recipe(), lib94.hyp),
        "checks": rows,
        "tta_same_predictions": float(np.mean(predictions["ours"] == predictions["airbench"])),
    }
    write(results, args, recipe, plan)


def write(results: dict, args: argparse.Namespace, recipe, plan) -> None:
    """<out>/airbench-parity.{json,md}; exit 1 when a check fails."""
    rows = results["checks"]
    failed = [key for key, row in rows.items()
              if not row["ours"]["relative"] <= SLACK * row["airbench"]["relative"] + FLOOR]
    failed += ["recipe"] if results["recipe_fields_unlike_airbench94"] else []
    results.update(
        train_images=args.images, batch_size=recipe.batch_size, epochs=recipe.epochs,
        steps=plan.total_steps, torch=torch.__version__, jax=jax.__version__, failed=failed,
    )  # fmt: skip
    lines = [
        "# jaxcifar speedrun against airbench94's own code (CPU)",
        "",
        f"{args.images} CIFAR-10 training images, batch {recipe.batch_size}, {recipe.epochs} "
        f"epochs ({plan.total_steps} steps), the same initial weights, batches and flips on "
        f"every side; torch {torch.__version__}, jax {jax.__version__}. The reference is "
        "airbench's code in float64; each cell is the largest difference from it relative "
        "to the largest reference value (whitening: against a NumPy float64 kernel). A check "
        f"passes when ours (float32) is within {SLACK:g}x airbench's own float32 difference "
        f"+ {FLOOR:g}. Recipe fields unlike airbench94's hyp: "
        f"{', '.join(results['recipe_fields_unlike_airbench94']) or 'none'}.",
        "",
        "| compared | ours, float32 | airbench, float32 | ours vs airbench float32 "
        "| worst leaf (ours) | pass |",
        "|---|---:|---:|---:|---|---|",
    ]
    for key, row in rows.items():
        versus = row.get("ours_vs_airbench", {}).get("relative")
        lines.append(
            f"| {key.replace('_', ' ')} | {row['ours']['relative']:.2e} | "
            f"{row['airbench']['relative']:.2e} | {'-' if versus is None else f'{versus:.2e}'} | "
            f"`{row['ours']['leaf']}` | {'no' if key in failed else 'yes'} |"
        )
    lines += [
        "",
        f"TTA predictions of ours and airbench's float32 run agree on "
        f"{results['tta_same_predictions']:.1%} of the 200 test images.",
        "",
        f"Result: {'FAILED: ' + ', '.join(failed) if failed else 'every check passes'}.",
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "airbench-parity.json", json.dumps(results, indent=2) + "\n")
    atomic_write_text(args.out / "airbench-parity.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    run_script(main)
