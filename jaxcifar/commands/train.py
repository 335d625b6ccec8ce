"""Train a model and write its reports and checkpoint to an output folder.

Defaults reproduce the seed notebook (the CNN on CIFAR-10, 10 epochs, batch 4, SGD lr 0.001
momentum 0.9). `--recipe fast` starts from a faster recipe instead; any flag given
explicitly overrides the recipe. OUT receives metrics.json, accuracy.png, loss.png,
confusion_matrix.png and checkpoint.msgpack (rewritten atomically after every epoch).

`--resume` continues the run in OUT as its checkpoint saved it: the configuration is the
checkpoint's, with only the flags given explicitly applied (`--recipe` gives all its fields).
A flag that changes it is refused unless `--override-config` is given, except `--epochs` under
a constant schedule (how a run is extended) and `--limit-test` (evaluation only).

Ctrl-C (SIGINT), SIGTERM or SIGHUP stops the run: the epoch in progress is dropped, the
checkpoint of the last finished epoch stays, and the command prints the line that resumes the
run, exiting 130 (SIGINT), 143 (SIGTERM) or 129 (SIGHUP). A non-finite loss stops it likewise,
exit 2.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import re
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jaxcifar import folder_lock, parallel
from jaxcifar.commands.arguments import (
    add_compile_cache_argument, add_data_dir_argument, add_distributed_arguments,
    check_data_fits_model, check_writable_folder, data_dir_or_recorded, initialize_from_args,
    momentum, non_negative_float, output_folder, positive_float, positive_int, seed_int,
)
from jaxcifar.config import (
    ACTIVATIONS, DATASETS, DTYPES, MODELS, MOMENTUM_OPTIMIZERS, OPTIMIZERS, RECIPES, SCHEDULES,
    RunConfig,
)  # fmt: skip
from jaxcifar.data.sources import env_data_dir
from jaxcifar.errors import CheckpointError, ConfigError, DataError, TrainingDiverged
from jaxcifar.interrupt import Interrupted, StopOnSignal

if TYPE_CHECKING:  # for annotations only: importing it imports JAX, which --help does not need
    from jaxcifar.checkpoint import Checkpoint
    from jaxcifar.data.dataset import Dataset

# train.EPOCH_MODES, spelled out so that building the parser does not import JAX
# (tests/test_fused.py checks that the two agree).
EPOCH_MODES = ("auto", "loop", "chunk", "scan", "fused", "fused-pallas", "fused-pallas-all")

HELP = "train a model; write metrics.json, figures and a checkpoint"

# Flags that set a RunConfig field of the same name; absent unless given (SUPPRESS), so the
# recipe (or a resumed checkpoint) supplies the rest.
CONFIG_FLAGS = (
    "model", "dataset", "epochs", "batch_size", "optimizer", "lr", "momentum", "weight_decay",
    "schedule", "augment", "dtype", "seed", "limit_train", "limit_test", "mlp_hidden",
    "mlp_activation",
)  # fmt: skip
# A field's name as a word of a RunConfig message ("lr must be ...", "needs momentum > 0").
_FIELD_NAME = re.compile(rf"(?<![\w-])(?:{'|'.join(CONFIG_FLAGS)})(?![\w-])")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    seed = RECIPES["seed"]
    # Absent unless given, like the flags below: on --resume an explicit recipe is a change.
    parser.add_argument("--recipe", choices=sorted(RECIPES), default=argparse.SUPPRESS,
                        help="starting configuration (default: seed; with --resume: the "
                        "checkpoint's); explicit flags override it")  # fmt: skip
    add_data_dir_argument(parser, recorded="with --resume, the data the checkpoint records it "
                          "was trained on (where that still is)")  # fmt: skip
    group = parser.add_argument_group("run configuration (defaults: the chosen recipe's)")
    flags = (
        ("--model", dict(choices=MODELS)),
        ("--dataset", dict(choices=DATASETS, help="which dataset to use")),
        ("--epochs", dict(type=positive_int)),
        ("--batch-size", dict(type=positive_int)),
        ("--optimizer", dict(choices=OPTIMIZERS)),
        ("--lr", dict(type=positive_float, help="peak learning rate")),
        ("--momentum", dict(type=momentum, help="sgd / nesterov only (adam and adamw "
                            "use optax's b1=0.9, b2=0.999)")),
        ("--weight-decay", dict(type=non_negative_float, help="sgd, nesterov, adam: coupled "
                                "L2 (wd * params added to the gradient); adamw: decoupled "
                                "(lr * wd * params subtracted beside the Adam step)")),
        ("--schedule", dict(choices=SCHEDULES)),
        ("--augment", dict(action=argparse.BooleanOptionalAction,
                           help="random crop (4 px) + horizontal flip on the device")),
        ("--dtype", dict(choices=DTYPES, help="compute dtype (parameters stay float32)")),
        ("--seed", dict(type=seed_int, help="init, data order, dropout, crops, and which "
                        "examples --limit-train / --limit-test keep (another seed tests on "
                        "another subset)")),
        ("--limit-train", dict(type=positive_int, metavar="N",
                               help="train on a random N-example subset")),
        ("--limit-test", dict(type=positive_int, metavar="N",
                              help="test on a random N-example subset")),
        ("--mlp-hidden", dict(type=positive_int, nargs="+", metavar="WIDTH",
                              help="MLP hidden layer widths")),
        ("--mlp-activation", dict(choices=ACTIVATIONS)),
    )  # fmt: skip
    for flag, options in flags:
        name = flag[2:].replace("-", "_")
        default = getattr(seed, name)
        options.setdefault("help", "")
        options["help"] += f" (seed recipe: {default})"
        group.add_argument(flag, default=argparse.SUPPRESS, **options)
    parser.add_argument("--out", type=output_folder, default="runs/train", metavar="DIR",
                        help="output folder")
    parser.add_argument("--resume", action="store_true",
                        help="continue from OUT/checkpoint.msgpack, with its configuration")
    parser.add_argument("--override-config", action="store_true",
                        help="with --resume: accept flags that change the checkpoint's "
                        "configuration")
    parser.add_argument("--epoch-mode", choices=EPOCH_MODES, default="auto",
                        help="loop: jitted calls of 4 steps (of 1 in epochs of under 1,000 "
                        "steps, and for an epoch's last steps past a multiple of 4), batches "
                        "shipped from the host 100 steps at a time; chunk/scan: "
                        "lax.scan over 100 steps / a whole epoch on the device; "
                        "fused/fused-pallas/fused-pallas-all: the seed recipe's fast path on "
                        "one device, in XLA / its dense head in two Pallas kernels / the "
                        "whole step in six Pallas kernels; auto: chunk on CPU, scan "
                        "elsewhere, loop if the images fill over a quarter of a GPU's or "
                        "TPU's memory")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")  # fmt: skip
    add_compile_cache_argument(parser)
    add_distributed_arguments(parser)


def config_from_args(args: argparse.Namespace, saved: RunConfig | None = None) -> RunConfig:
    """The recipe named by --recipe if given, else `saved` (a resumed checkpoint's
    configuration), else the seed recipe; with every explicitly given flag applied."""
    base = RECIPES[args.recipe] if hasattr(args, "recipe") else saved or RECIPES["seed"]
    overrides = {name: getattr(args, name) for name in CONFIG_FLAGS if hasattr(args, name)}
    if "mlp_hidden" in overrides:
        overrides["mlp_hidden"] = tuple(overrides["mlp_hidden"])
    try:
        return dataclasses.replace(base, **overrides)
    except ConfigError as error:  # RunConfig names its fields: a user gave flags
        flags = _FIELD_NAME.sub(lambda field: "--" + field[0].replace("_", "-"), str(error))
        raise ConfigError(flags) from None


def resume_command(args: argparse.Namespace, *, with_config: bool) -> str:
    """The `jaxcifar train --resume --out DIR` line that continues this run, with the execution
    flags given (--data-dir, or $JAXCIFAR_DATA_DIR's; --epoch-mode, --quiet, --compile-cache,
    and a multi-process run's --coordinator, --num-processes, --process-id); the checkpoint
    supplies the configuration. `with_config` adds the configuration flags given (--recipe, each of
    CONFIG_FLAGS, --override-config), for a checkpoint that does not hold this run's
    configuration yet: a resume that changed it, stopped before its first epoch ended."""
    words = ["jaxcifar", "train", "--resume", *_path_flag("--out", args.out)]
    if with_config:
        if hasattr(args, "recipe"):
            words += ["--recipe", args.recipe]
        for name in CONFIG_FLAGS:
            if not hasattr(args, name):  # not given: the checkpoint's value
                continue
            flag, value = "--" + name.replace("_", "-"), getattr(args, name)
            if isinstance(value, bool):
                words.append(flag if value else f"--no-{flag[2:]}")
            else:
                words += [flag, *map(str, value if isinstance(value, list) else [value])]
        if args.override_config:
            words.append("--override-config")
    # One from $JAXCIFAR_DATA_DIR too: the line may be pasted where the variable is not set.
    data_dir = args.data_dir if args.data_dir is not None else env_data_dir()
    if data_dir is not None:
        words += _path_flag("--data-dir", data_dir)
    if args.epoch_mode != "auto":
        words += ["--epoch-mode", args.epoch_mode]
    if args.quiet:
        words.append("--quiet")
    if args.compile_cache is not None:
        words += _path_flag("--compile-cache", args.compile_cache)
    for flag in ("coordinator", "num_processes", "process_id"):  # this process's place in a job
        if getattr(args, flag) is not None:
            words += ["--" + flag.replace("_", "-"), str(getattr(args, flag))]
    return shlex.join(words)


def _path_flag(flag: str, path: str | Path) -> list[str]:
    """A path flag's words: `--out=-run` for a path starting with '-', which argparse would
    take for a flag if it came as a word of its own."""
    return [f"{flag}={path}"] if str(path).startswith("-") else [flag, str(path)]


def run(args: argparse.Namespace) -> int:
    if args.override_config and not args.resume:
        raise ConfigError("--override-config applies only with --resume")
    import jax  # after the flags' own checks

    joined = initialize_from_args(args)  # before anything touches a device
    if joined:
        # The backend starts with every process or with none: started here, before any check
        # can end one process's command, so that the others hear of it (`peers`) rather than
        # wait inside the backend's start for a process that has gone. (One process starts
        # it after its checks: on a GPU that takes seconds and memory.)
        jax.devices()
    # Process 0 alone writes --out. Held from before the checkpoint a resume continues is
    # read, so that no other command saves epochs there between the read and this run's saves.
    writes_out = not joined or parallel.is_main_process()
    with folder_lock.holding(args.out) if writes_out else contextlib.nullcontext():
        return _run_holding_out(args)


def _run_holding_out(args: argparse.Namespace) -> int:
    """`run`, from the flags' checks on, with --out held (`folder_lock`) in process 0."""
    import jax

    from jaxcifar import checkpoint, peers, xla_cache
    from jaxcifar.speedrun import model_file

    out = args.out
    # The checkpoint gives the configuration, which every later check reads.
    saved = _resumed_checkpoint(out) if args.resume else None
    config = config_from_args(args, saved.config if saved is not None else None)
    if saved is not None:
        _check_resume(saved, config, args.override_config)
    # Whether the run is done is process 0's call, met on every path so that no process waits
    # for one gone another way: it alone writes the reports, and another host's --out may
    # hold only a copy of the checkpoint. A run stopped after its last epoch but before its
    # reports is not done: `fit` trains nothing and evaluates, and the reports are written.
    done = len(saved.history) if saved is not None else 0
    finished = saved is not None and config.epochs == done and _reports_cover(out, done)
    if peers.process_0s("the check for a finished run", finished):
        if parallel.is_main_process():
            more = (
                "raise --epochs to continue" if config.schedule == "constant"
                else f"its {config.schedule} schedule ends there (train longer in a new run; "
                "--epochs with --override-config redraws the schedule over the new length, and "
                "the rate jumps back up)"
            )
            print(f"{saved.path}: already trained {done} epoch{'s' * (done != 1)}; {more}")
        return 0  # nothing trained, so the reports of the run stay as they are
    _check_flags_apply(args, config)
    from jaxcifar import train

    # Refused before touching --out or loading data; the device count is known already.
    if args.epoch_mode in train.FUSED_MODES:
        from jaxcifar.fused.epoch import check_config

        check_config(config, args.epoch_mode)
    parallel.check_batch_size(config.batch_size, len(train.training_devices(args.epoch_mode)))
    check_writable_folder(out)
    if saved is None and (out / checkpoint.FILENAME).exists():
        raise ConfigError(f"{out} already holds a checkpoint; pass --resume or another --out")
    if saved is None and (out / model_file.FILENAME).exists():  # as speedrun refuses a run's
        # evaluate and predict would refuse the folder: which of the two models is meant?
        raise ConfigError(
            f"--out {out} holds a speedrun model ({model_file.FILENAME}), whose folder this "
            "run's checkpoint would make ambiguous; pick another --out"
        )
    cache = xla_cache.resolve(args.compile_cache)
    # Stopping drops the epoch in progress and keeps the last epoch-boundary checkpoint.
    # Resuming mid-epoch would need the step index, the partial loss sums and a runner that
    # starts at any step in every epoch mode; dropping keeps the resume contract trivially
    # bit-exact (an epoch depends only on seed, epoch and the state at its start) and loses
    # at most one epoch. `in_checkpoint`: (epochs, config) of the checkpoint in OUT, latest
    # last, once there is one.
    in_checkpoint = [(len(saved.history), saved.config)] if saved is not None else []
    try:
        with StopOnSignal() as signals, xla_cache.compilation_cache(cache):
            try:
                return _train(args, config, saved, out, signals, in_checkpoint)
            except jax.errors.JaxRuntimeError:
                # A collective that failed as another process left the run: say why it left.
                stop = peers.peer_stop()
                if stop is None:
                    raise
                raise stop from None
    except Interrupted as stop:
        peers.tell_interrupted(stop)
        _report_stop(args, config, stop, in_checkpoint)
        return stop.exit_code
    except TrainingDiverged as error:
        if not in_checkpoint:
            raise
        raise TrainingDiverged(
            f"{error}; {out / checkpoint.FILENAME} keeps the last good state "
            f"(epoch {in_checkpoint[-1][0]})"
        ) from None


def _check_resume(saved: Checkpoint, config: RunConfig, override: bool) -> None:
    """Refuse a resume of `saved` as `config` that would not continue its run: fewer epochs
    than it trained, or (unless `override`, --override-config) a changed configuration."""
    done = len(saved.history)
    # First: no --override-config allows it, so the changes' advice to add one would not do.
    if config.epochs < done:  # fit would train nothing, and the reports contradict it
        raise ConfigError(
            f"--epochs {config.epochs}: {saved.path} has trained {done} epochs already; "
            f"a resume continues the run, to --epochs {done} or more"
        )
    changes = config.resume_changes(saved.config)
    if changes and not override:
        raise CheckpointError(
            f"{saved.path} was made with another configuration ({'; '.join(changes)}); "
            "drop those flags to continue the run as saved, or add --override-config to "
            "change them"
        )


def _check_flags_apply(args: argparse.Namespace, config: RunConfig) -> None:
    """Refuse flags given that `config`'s model or optimizer would ignore, yet keep in the
    configuration: --mlp-hidden/--mlp-activation beside the CNN, --momentum beside Adam."""
    mlp_flags = [flag for flag in ("--mlp-hidden", "--mlp-activation")
                 if hasattr(args, flag[2:].replace("-", "_"))]  # fmt: skip
    if mlp_flags and config.model != "mlp":
        raise ConfigError(f"{' and '.join(mlp_flags)}: for --model mlp; this run's model is "
                          f"{config.model}")  # fmt: skip
    if hasattr(args, "momentum") and config.optimizer not in MOMENTUM_OPTIMIZERS:
        raise ConfigError(  # b1 is not a momentum
            f"--momentum: for --optimizer {' or '.join(MOMENTUM_OPTIMIZERS)}; this run's "
            f"optimizer, {config.optimizer}, uses optax's betas (0.9, 0.999)"
        )


def _report_stop(args: argparse.Namespace, config: RunConfig, stop: Interrupted,
                 in_checkpoint: list[tuple[int, RunConfig]]) -> None:  # fmt: skip
    """Say on stderr why the run stopped, what its checkpoint keeps and how to go on:
    process 0 the line that resumes the run (`in_checkpoint` as `_train` keeps it), the
    others that process 0 says it."""
    from jaxcifar import checkpoint

    if not parallel.is_main_process():  # it saves nothing, and knows nothing of what is
        print(f"jaxcifar train: {stop}; process 0 writes the checkpoint and says how to "
              "resume", file=sys.stderr)  # fmt: skip
        return
    if in_checkpoint:
        epochs, held = in_checkpoint[-1]
        kept = f"{args.out / checkpoint.FILENAME} keeps epoch {epochs}/{config.epochs}"
        # Until this run saves an epoch, a resume that changed the configuration leaves
        # the old one in the checkpoint: the line must repeat the flags that changed it.
        how = f"resume with: {resume_command(args, with_config=held != config)}"
    else:
        epochs = 0
        kept, how = (
            "no epoch finished, so nothing is saved",
            "start again with the same command",
        )
    when = (
        "after the last epoch, before the reports were written (resuming writes them)"
        if epochs >= config.epochs
        else f"before epoch {epochs + 1} finished; that epoch is dropped"
    )
    print(f"jaxcifar train: {stop} {when}; {kept}; {how}", file=sys.stderr)


def device_notes(epoch_mode: str, devices: Sequence[Any]) -> list[str]:
    """One-line notes for stderr on how `epoch_mode` (resolved, not "auto") uses this process's
    `devices` (jax.Device objects).

    The fused path trains on the first device only; its Pallas modes interpret their kernels
    on a CPU (benchmarks/README.md: fused-pallas-all 5.6 ms a step against chunk's 0.5 on
    the AVX-512 CPU), which is for tests, not training. Loop mode on several virtual CPU devices
    hung in XLA:CPU's all-reduce and aborted a minute later (jax 0.10.2 on 2 cores: 8 devices
    4 runs of 4, 2 devices 5 of 5 on 1,000 images; a plain sharded jit called often does
    too); chunk and scan on 8 ran (docs/scaling.md).
    """
    from jaxcifar.fused.epoch import PALLAS_PARTS
    from jaxcifar.train import FUSED_MODES

    notes = []
    if epoch_mode in FUSED_MODES and len(devices) > 1:
        notes.append(
            f"note: --epoch-mode {epoch_mode} trains on one device of the {len(devices)} "
            "visible; chunk or scan trains data parallel on all of them"
        )
    if PALLAS_PARTS.get(epoch_mode) and devices[0].platform == "cpu":
        notes.append(
            f"note: --epoch-mode {epoch_mode} interprets its Pallas kernels on a CPU, many "
            "times slower than compiled: it is meant for GPUs; --epoch-mode chunk trains the "
            "same way here"
        )
    if epoch_mode == "loop" and devices[0].platform == "cpu" and len(devices) > 1:
        notes.append(
            f"warning: --epoch-mode loop on {len(devices)} CPU devices can hang in XLA:CPU's "
            "all-reduce and abort after a minute; --epoch-mode chunk trains the same way "
            "(docs/scaling.md)"
        )
    return notes


def _reports_cover(out: Path, epochs: int) -> bool:
    """Whether OUT holds the reports of a run of `epochs` epochs: its metrics.json, written
    after the figures, lists that many, and every figure is there; not an evaluation's
    reports (`evaluate` refuses a training run's --out, but an older one wrote there)."""
    from jaxcifar.reports import FIGURES, METRICS_FILE

    try:
        written = json.loads((out / METRICS_FILE).read_text())
        trained = len(written["epochs"]) == epochs and "evaluated" not in written
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return trained and all((out / name).exists() for name in FIGURES)


def _resumed_checkpoint(out: Path) -> Checkpoint:
    """OUT/checkpoint.msgpack, loaded for --resume. CheckpointError when it is missing (saying
    so when OUT holds a speedrun model instead) or unusable, as `checkpoint.load` says."""
    from jaxcifar import checkpoint

    path = out / checkpoint.FILENAME
    if not path.exists():
        from jaxcifar.speedrun import model_file

        found = model_file.find(out)
        if found is not None:
            raise CheckpointError(
                f"{path}: no checkpoint there; {found} is a speedrun model (written by "
                "jaxcifar speedrun), which jaxcifar evaluate and predict read but "
                "train --resume cannot continue"
            )
    return checkpoint.load(path)


def _train(
    args: argparse.Namespace, config: RunConfig, saved: Checkpoint | None, out: Path,
    signals: StopOnSignal, in_checkpoint: list[tuple[int, RunConfig]],
) -> int:  # fmt: skip
    import jax

    from jaxcifar import checkpoint, epochs, peers, train
    from jaxcifar.data import load_split
    from jaxcifar.models import cnn
    from jaxcifar.reports import build_metrics, write_reports

    state, history = None, []
    # The data the checkpoint recorded serves a resume of the same --dataset only.
    same_dataset = saved is not None and saved.config.dataset == config.dataset
    choice = data_dir_or_recorded(args.data_dir, saved.train_data if same_dataset else None)
    train_set, test_set = (
        load_split(config.dataset, split, data_dir=choice.data_dir, limit=limit, seed=config.seed)
        for split, limit in (("train", config.limit_train), ("test", config.limit_test))
    )
    input_shape = train_set.images.shape[1:]
    if config.model == "cnn" and min(input_shape[:2]) < cnn.POOL_SCALE:
        raise DataError(
            f"{train_set.source} ({choice.origin}) holds images of (H, W) {input_shape[:2]}: "
            f"the CNN pools them to 1/{cnn.POOL_SCALE} a side, so it needs {cnn.POOL_SCALE}x"
            f"{cnn.POOL_SCALE} or larger; train --model mlp on them"
        )
    train_data = _training_data(train_set)  # what each checkpoint records of it
    if saved is not None:
        other_dataset = saved.config.dataset if saved.config.dataset != config.dataset else None
        check_data_fits_model(train_set, "train", choice.origin, saved.path, saved.input_shape,
                              saved.class_names, trained_dataset=other_dataset)  # fmt: skip
        if not args.override_config:
            _check_same_training_data(saved, train_data, choice.origin)
        template = train.state_template(config, input_shape, train_set.num_classes)
        state, history = checkpoint.restore(saved, template), saved.history

    mode = epochs.pick_epoch_mode(args.epoch_mode, train_set)  # what runs, for the reports
    device = train.describe_devices(mode)
    print(f"devices: {device['device_count']} x {device['platform']} ({device['device_kind']})")
    recorded = f" ({choice.origin}; no --data-dir given)" if choice.recorded else ""
    print(f"data: {len(train_set)} train / {len(test_set)} test examples from "
          f"{train_set.source}{recorded}")  # fmt: skip
    for note in [*device_notes(mode, jax.local_devices()), *_subset_note(history, test_set)]:
        print(f"jaxcifar train: {note}", file=sys.stderr)  # as the command's warnings read

    def on_epoch_end(state, history):
        with signals.hold():  # a signal now would lose the finished epoch
            checkpoint.save(out, state, config, input_shape=input_shape,
                            class_names=train_set.class_names, history=history,
                            train_data=train_data)  # fmt: skip
            in_checkpoint.append((len(history), config))

    # In a multi-process run a signal waits for a point where every process can stop with
    # it (`train.fit`): one that stopped alone would leave the others in a collective.
    with signals.defer() if jax.process_count() > 1 else contextlib.nullcontext():
        # Hashing the data and weights takes 0.1 s on CIFAR-10: with no peer, it is not done.
        facts = _run_facts(config, mode, train_set, test_set, state, len(history), train_data
                           ) if jax.process_count() > 1 else {}  # fmt: skip
        peers.agree("the start of training", facts)
        result = train.fit(
            config, train_set, test_set, state=state, history=history, epoch_mode=mode,
            on_epoch_end=on_epoch_end, progress=not args.quiet, stop_signal=signals.take_pending,
        )  # fmt: skip
        # A signal after the last meeting (in the last evaluation) stops every process alike.
        peers.go_on("the end of training", signals.take_pending())
    data = {"source": train_set.source, "train_examples": len(train_set),
            "test_examples": len(test_set)}  # fmt: skip
    report = build_metrics(
        config=config.to_dict(), device=device, history=result.history,
        labels=test_set.labels, predictions=result.test.predictions,
        class_names=test_set.class_names, compile_seconds=result.compile_seconds,
        epoch_mode=mode, data=data,
    )  # fmt: skip
    # Every process holds the same metrics; only process 0 writes them, as it does checkpoints.
    if parallel.is_main_process():
        # A signal now waits for the reports (a second or so) and is then dropped: the run is
        # done. Once it said "before the reports were written" of reports written whole.
        with signals.hold():
            write_reports(out, report)
            signals.finish()
        print(f"test accuracy {report['test_accuracy']:.4f}; reports in {out}", file=sys.stdout)
    return 0


def _subset_note(history: list[dict[str, Any]], test_set: Dataset) -> list[str]:
    """A note when a resume tests on another number of examples (--limit-test) than the
    epochs it continues did: metrics.json's epochs, and the curves, then mix the two."""
    counts = sorted({record["test_examples"] for record in history} - {None, len(test_set)})
    if not counts:
        return []
    return [
        f"note: earlier epochs of this run were tested on {' and '.join(map(str, counts))} "
        f"examples, this resume tests on {len(test_set)} (--limit-test): metrics.json records "
        "each epoch's count, and its test curves join the two"
    ]


def _run_facts(
    config: RunConfig, epoch_mode: str, train_set: Dataset, test_set: Dataset, state: Any,
    epochs_done: int, train_data: dict[str, Any],
) -> dict[str, str]:  # fmt: skip
    """What every process of a multi-process run must share, by name (`peers.agree`): each
    flag of the configuration, the epoch mode, the data (sizes, shapes, labels, classes,
    pixels; the training set's as `train_data`, its record, holds them), the resumed
    checkpoint's epochs and weights, and the versions that compile the programs."""
    import jax

    from jaxcifar import __version__

    facts = {"--" + name.replace("_", "-"): str(value) for name, value in config.to_dict().items()}
    facts["--epoch-mode"] = epoch_mode
    for name, dataset, record in (("training data", train_set, train_data),
                                  ("test data", test_set, _data_record(test_set))):  # fmt: skip
        facts[name] = (f"{len(dataset)} x {dataset.images.shape[1:]}, {record['digest']}, "
                       f"pixels {record['pixels']}")  # fmt: skip
    facts["epochs trained"] = str(epochs_done)
    facts["checkpoint weights"] = "none" if state is None else _digest(*jax.tree.leaves(state))
    facts["jaxcifar, jax"] = f"{__version__}, {jax.__version__}"
    return facts


def _training_data(train_set: Dataset) -> dict[str, Any]:
    """What a checkpoint records of the training set (`checkpoint.save`'s `train_data`): its
    source, size, a digest of its labels, image shape and classes, and one of its pixels
    (0.1 s for CIFAR-10's: an image-folder tree of other images sorted into the same classes
    has the same labels)."""
    import os

    # Absolute: a bare resume or evaluate reads it again, perhaps from another folder.
    return {"source": os.path.abspath(train_set.source), **_data_record(train_set)}


def _check_same_training_data(saved: Checkpoint, now: dict[str, Any], origin: str) -> None:
    """DataError unless the training set recorded as `now` (`_training_data`, from `origin`,
    as `DataChoice` names it) is the one `saved` recorded (its size, labels in order, image
    shape and classes, and pixels): a resume on other data (another --data-dir, the
    downloaded release after a JPEG copy) went on training on it without a word. Checkpoints
    that predate the record are not checked, and those that predate its pixels' digest are
    checked without it."""
    recorded = saved.train_data
    keys = ["examples", "digest", *(["pixels"] if "pixels" in recorded else [])] if recorded else []
    if all(recorded[key] == now[key] for key in keys):
        return
    raise DataError(
        f"the train set in {now['source']} ({origin}; {now['examples']} examples) is not the "
        f"one {saved.path} was trained on ({recorded['source']}; {recorded['examples']} "
        "examples, other images or labels, or in another order); pass the --data-dir it was "
        "trained on, or --override-config to go on training on this data"
    )


def _data_record(dataset: Dataset) -> dict[str, Any]:
    """{"examples": its size, "digest": a short hash of its labels (in order), image shape and
    class names, "pixels": one of its pixels}."""
    return {"examples": len(dataset),
            "digest": _digest(dataset.labels, dataset.images.shape, dataset.class_names),
            "pixels": _digest(dataset.images)}  # fmt: skip


def _digest(*parts: Any) -> str:
    """A short hash of NumPy arrays (their bytes) and other values (their repr)."""
    import hashlib

    import numpy as np

    digest = hashlib.sha256()
    for part in parts:  # an array's bytes in C order, read in place (not copied: 150 MB)
        data = np.ascontiguousarray(part) if hasattr(part, "dtype") else repr(part).encode()
        digest.update(data)
    return digest.hexdigest()[:12]
