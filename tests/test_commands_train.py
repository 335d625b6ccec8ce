import json
import os
import shlex
import signal
import sys
import time
import types
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from jaxcifar import checkpoint, epochs, xla_cache
from jaxcifar.cli import main
from jaxcifar.commands.train import device_notes
from jaxcifar.data.dataset import CIFAR10_CLASSES
from jaxcifar.models import mlp
from data_files import write_tree

FAST = ["--model", "mlp", "--mlp-hidden", "8", "--batch-size", "8", "--quiet"]


@pytest.fixture
def image_tree(tmp_path, fresh_cache):
    """A CIFAR-10-shaped image-folder tree: 4 train and 2 test PNGs per class, of pixels
    k * 25 + 0..19 for the k-th class."""
    root = tmp_path / "data"
    write_tree(root, (4, 2), (32, 32), classes=CIFAR10_CLASSES,
               fill=lambda rng, split, k: k * 25 + rng.integers(0, 20, (32, 32, 3)))  # fmt: skip
    return root


def test_train_evaluate_predict_end_to_end(image_tree, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--data-dir", str(image_tree), "--epochs", "2", "--out", str(out), *FAST]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "devices: 1 x cpu" in printed and "epoch 2/2: train loss" in printed
    report = json.loads((out / "metrics.json").read_text())
    assert set(report) == {"config", "device", "epochs", "test_accuracy", "class_names",
                           "per_class_accuracy", "confusion_matrix", "compile_seconds",
                           "epoch_mode", "data"}  # fmt: skip
    assert report["config"]["model"] == "mlp" and report["config"]["lr"] == 0.001
    assert report["epoch_mode"] == "chunk"  # what auto picked on this CPU, not "auto"
    assert report["data"] == {"source": str(image_tree), "train_examples": 40, "test_examples": 20}
    assert report["device"]["platform"] == "cpu"
    assert [set(e) for e in report["epochs"]] == [
        {"epoch", "train_loss", "train_accuracy", "test_loss", "test_accuracy", "test_examples",
         "seconds"}
    ] * 2
    assert [e["test_examples"] for e in report["epochs"]] == [20, 20]
    assert list(report["per_class_accuracy"]) == list(CIFAR10_CLASSES)
    matrix = np.array(report["confusion_matrix"])
    assert matrix.shape == (10, 10) and matrix.sum() == 20 and (matrix.sum(axis=1) == 2).all()
    assert report["test_accuracy"] == pytest.approx(np.trace(matrix) / 20)
    assert report["test_accuracy"] == report["epochs"][-1]["test_accuracy"]
    for name in ("accuracy.png", "loss.png", "confusion_matrix.png", "checkpoint.msgpack"):
        assert (out / name).stat().st_size > 0
    assert any((tmp_path / "cache" / "xla").iterdir())  # compiled programs, for the next run

    evaluated = tmp_path / "eval"
    assert main(["evaluate", "--checkpoint", str(out), "--data-dir", str(image_tree),
                 "--out", str(evaluated)]) == 0  # fmt: skip
    assert (
        json.loads((evaluated / "metrics.json").read_text())["confusion_matrix"]
        == report["confusion_matrix"]
    )
    assert "test loss" in capsys.readouterr().out

    big_rgba = tmp_path / "big.png"
    Image.fromarray(np.full((90, 70, 4), 200, np.uint8), "RGBA").save(big_rgba)
    gray = tmp_path / "gray.jpg"
    Image.fromarray(np.full((10, 10), 30, np.uint8), "L").save(gray)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    assert main(["predict", "--checkpoint", str(out), str(big_rgba), str(empty), str(gray)]) == 1
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert [line.split(":")[0] for line in lines] == [str(big_rgba), str(gray)]
    probabilities = [float(part.split()[-1]) for part in lines[0].split(": ", 1)[1].split(", ")]
    assert len(probabilities) == 3 and probabilities == sorted(probabilities, reverse=True)
    assert f"jaxcifar predict: error: {empty}: not a readable image" in captured.err
    # The top 3 of the checkpoint's model applied to the file's pixels, by class name.
    test_image = image_tree / "test" / "truck" / "0.png"
    assert main(["predict", "--checkpoint", str(out), str(test_image)]) == 0
    saved = checkpoint.load(out)
    params = {name: {key: np.asarray(value) for key, value in layer.items()}
              for name, layer in saved.state["params"].items()}  # fmt: skip
    pixels = np.asarray(Image.open(test_image), np.float32)[None] / 127.5 - 1
    logits = mlp.apply(params, jnp.asarray(pixels), activation=saved.config.mlp_activation)
    probs = dict(zip(CIFAR10_CLASSES, np.asarray(jax.nn.softmax(logits))[0].tolist()))
    name, ranked = capsys.readouterr().out.rstrip("\n").split(": ", 1)
    printed = {cls: float(p) for cls, p in (part.rsplit(" ", 1) for part in ranked.split(", "))}
    assert name == str(test_image) and len(printed) == 3
    # (Within rounding: predict's program is jitted, this one eager.)
    assert all(abs(p - probs[cls]) < 1e-3 for cls, p in printed.items()), (printed, probs)
    others = [p for cls, p in probs.items() if cls not in printed]
    assert min(printed.values()) >= max(others) - 1e-3  # the top 3, up to near-ties

    # Resuming with another batch size is refused, naming the field; more epochs continue.
    resume = ["train", "--data-dir", str(image_tree), "--out", str(out), "--resume", *FAST]
    assert main([*resume, "--epochs", "3", "--batch-size", "4"]) == 2
    assert "batch_size: 8 -> 4" in capsys.readouterr().err
    assert main([*resume, "--epochs", "3"]) == 0
    assert len(json.loads((out / "metrics.json").read_text())["epochs"]) == 3
    assert main(["train", "--data-dir", str(image_tree), "--out", str(out), *FAST]) == 2
    assert "already holds a checkpoint; pass --resume" in capsys.readouterr().err


def test_train_refuses_an_out_holding_a_speedrun_model(tmp_path, capsys):
    # It wrote checkpoint.msgpack beside model.msgpack, and evaluate and predict then refused
    # the folder (which model?), as speedrun refuses a training run's folder.
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "model.msgpack").write_bytes(b"a speedrun's model")
    assert main(["train", "--data-dir", str(tmp_path / "no-data"), "--out",
                 str(tmp_path / "run")]) == 2  # fmt: skip
    assert capsys.readouterr().err == (
        f"jaxcifar train: error: --out {tmp_path / 'run'} holds a speedrun model (model.msgpack),"
        " whose folder this run's checkpoint would make ambiguous; pick another --out\n"
    )
    assert sorted(path.name for path in (tmp_path / "run").iterdir()) == ["model.msgpack"]


def test_compile_cache_saves_programs_in_its_folder_and_runs_on_if_jax_moves_its_reset(
    tmp_path, monkeypatch
):
    def scaled(x):  # a program no other test compiles, so it is compiled here
        return x * 7.0 + 1.0

    with xla_cache.compilation_cache(tmp_path / "cache"):
        jax.jit(scaled).lower(jnp.ones(5)).compile()
    assert any((tmp_path / "cache").iterdir())
    # A JAX that moved its experimental reset call: the run warns and goes on.
    monkeypatch.setitem(sys.modules, "jax.experimental.compilation_cache.compilation_cache", None)
    try:
        with pytest.warns(UserWarning, match="moved the call that points its compilation cache"):
            with xla_cache.compilation_cache(tmp_path / "other"):
                assert jax.jit(scaled)(jnp.ones(2)).tolist() == [8.0, 8.0]
    finally:
        # The blocked reset left JAX's cache object on "other": unblock it and do that reset,
        # so later tests do not write their compiled programs into this test's folder.
        monkeypatch.undo()
        from jax.experimental.compilation_cache.compilation_cache import reset_cache

        reset_cache()


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--lr", "-1"], "argument --lr: expected a positive finite number, got -1"),
        (["--optimizer", "rmsprop"], "argument --optimizer: invalid choice: 'rmsprop'"),
        (["--batch-size", "500"], "--batch-size 500 is larger than the training set (40 examples)"),
        (["--model", "resnet"], "argument --model: invalid choice: 'resnet'"),
        (["--dataset", "imagenet"], "argument --dataset: invalid choice: 'imagenet'"),
        (["--epochs", "0"], "argument --epochs: expected a positive integer, got 0"),
        (["--batch-size", "-8"], "argument --batch-size: expected a positive integer, got -8"),
        (["--lr", "0"], "argument --lr: expected a positive finite number, got 0"),
        (["--data-dir", "{tmp}/nowhere"], "data dir {tmp}/nowhere does not exist"),
        (["--out", "{tmp}/file"], "--out {tmp}/file is a file; expected a folder"),
        # Root may write into any chmod'ed folder, so unwritable means under a file, or /proc.
        (["--out", "{tmp}/file/run"], "--out {tmp}/file/run: cannot write there (Not a directory)"),
        (
            ["--out", "/proc/jaxcifar-run"],
            "--out /proc/jaxcifar-run: cannot write there (No such file",
        ),
        (["--override-config"], "--override-config applies only with --resume"),
    ],
)
def test_bad_flags_give_one_line_errors(image_tree, tmp_path, capsys, flags, message):
    (tmp_path / "file").write_text("")
    flags, message = [flag.format(tmp=tmp_path) for flag in flags], message.format(tmp=tmp_path)
    args = ["train", "--data-dir", str(image_tree), "--out", str(tmp_path / "r"), *FAST, *flags]
    try:
        code = main(args)
    except SystemExit as exit_info:  # argparse's own errors
        code = exit_info.code
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("jaxcifar train: error:")


def test_a_batch_that_does_not_split_over_the_devices_is_refused_before_the_data_is_read(
    tmp_path, capsys, monkeypatch
):
    from jaxcifar import train

    monkeypatch.setattr(train, "training_devices", lambda epoch_mode: jax.devices() * 8)
    out = tmp_path / "run"
    args = ["train", "--data-dir", str(tmp_path / "nowhere"), "--out", str(out), *FAST]
    assert main([*args, "--batch-size", "4"]) == 2  # the data dir's error, were it read first
    assert capsys.readouterr().err.strip() == (
        "jaxcifar train: error: --batch-size 4 does not split evenly over 8 devices; "
        "use a multiple of 8"
    )
    assert not out.exists()


def test_device_notes_say_fused_takes_one_device_and_loop_may_hang_on_virtual_cpus():
    cpu, gpu = types.SimpleNamespace(platform="cpu"), types.SimpleNamespace(platform="gpu")
    assert device_notes("fused", [cpu] * 8) == [
        "note: --epoch-mode fused trains on one device of the 8 visible; chunk or scan trains "
        "data parallel on all of them"
    ]
    for count in (2, 8):  # 2 devices of 2 cores hung too
        assert device_notes("loop", [cpu] * count) == [
            f"warning: --epoch-mode loop on {count} CPU devices can hang in XLA:CPU's "
            "all-reduce and abort after a minute; --epoch-mode chunk trains the same way "
            "(docs/scaling.md)"
        ]
    for mode in ("fused-pallas", "fused-pallas-all"):  # interpreted on a CPU: slow
        assert device_notes(mode, [cpu]) == [
            f"note: --epoch-mode {mode} interprets its Pallas kernels on a CPU, many times "
            "slower than compiled: it is meant for GPUs; --epoch-mode chunk trains the same "
            "way here"
        ]
    quiet = [("fused-pallas", [gpu]), ("loop", [cpu]), ("chunk", [cpu] * 8), ("loop", [gpu] * 8)]
    for mode, devices in quiet:
        assert device_notes(mode, devices) == [], (mode, len(devices))


def test_train_help_states_the_loop_rule_and_what_seed_and_momentum_reach(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")  # no wrapping: a flag name stays whole
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    help_text = capsys.readouterr().out
    assert (
        f"loop: jitted calls of {epochs.LOOP_UNROLL} steps (of 1 in epochs of under "
        f"{epochs.LOOP_UNROLL_MIN_STEPS:,} steps, and for an epoch's last steps past a multiple "
        f"of {epochs.LOOP_UNROLL}), batches shipped from the host {epochs.SYNC_EVERY} steps"
    ) in help_text
    assert f"lax.scan over {epochs.CHUNK_STEPS} steps" in help_text
    assert "which examples --limit-train / --limit-test keep" in help_text
    assert "sgd / nesterov only (adam and adamw use optax's b1=0.9, b2=0.999)" in help_text


def test_evaluate_refuses_a_foreign_checkpoint(tmp_path, capsys):
    bogus = tmp_path / "checkpoint.msgpack"
    bogus.write_bytes(b"\x00\x01garbage")
    assert main(["evaluate", "--checkpoint", str(tmp_path)]) == 2
    assert f"jaxcifar evaluate: error: {bogus}: not a" in capsys.readouterr().err


def test_short_cnn_run_on_real_cifar10_beats_chance(shared_data, tmp_path, capsys):
    out = tmp_path / "real"
    args = ["train", "--data-dir", str(shared_data), "--limit-train", "2000", "--limit-test", "500",
            "--epochs", "2", "--batch-size", "32", "--optimizer", "adam", "--lr", "0.003",
            "--out", str(out), "--compile-cache", str(tmp_path / "xla"), "--quiet"]  # fmt: skip
    assert main(args) == 0
    assert json.loads((out / "metrics.json").read_text())["test_accuracy"] > 0.2


@pytest.mark.parametrize(
    ("schedule", "advice"),
    [
        ("constant", "raise --epochs to continue\n"),
        ("cosine", "its cosine schedule ends there (train longer in a new run; --epochs with "
                   "--override-config redraws the schedule over the new length, and the rate "
                   "jumps back up)\n"),
    ],
)
def test_resuming_a_finished_run_says_how_to_train_longer(
    image_tree, tmp_path, capsys, schedule, advice
):
    args = ["train", "--data-dir", str(image_tree), "--epochs", "1", "--schedule", schedule,
            "--out", str(tmp_path / "run"), *FAST]  # fmt: skip
    assert main(args) == 0
    capsys.readouterr()
    files = {path: path.read_bytes() for path in (tmp_path / "run").iterdir()}
    assert main([*args, "--resume"]) == 0
    assert f"already trained 1 epoch; {advice}" in capsys.readouterr().out
    # Nothing is trained, so nothing is evaluated or rewritten, even for changed flags.
    assert main([*args, "--resume", "--lr", "0.5", "--dtype", "bfloat16", "--override-config"]) == 0
    printed = capsys.readouterr().out.splitlines()  # the one line, no "test accuracy" after it
    assert len(printed) == 1
    saved = tmp_path / "run" / checkpoint.FILENAME
    assert printed[0] == f"{saved}: already trained 1 epoch; {advice}".rstrip("\n")
    assert {path: path.read_bytes() for path in (tmp_path / "run").iterdir()} == files


@pytest.mark.parametrize("lost", ["metrics.json", "confusion_matrix.png"])
def test_resuming_a_run_stopped_before_its_reports_writes_them(image_tree, tmp_path, lost):
    # A signal (or kill -9) after the last epoch's checkpoint but before the reports: the
    # printed resume line must write them, not say "already trained".
    out = tmp_path / "run"
    args = ["train", "--data-dir", str(image_tree), "--epochs", "1", "--out", str(out), *FAST]
    assert main(args) == 0
    written = {path.name: path.read_bytes() for path in out.iterdir()}
    (out / lost).unlink()
    assert main(["train", "--data-dir", str(image_tree), "--resume", "--out", str(out)]) == 0
    assert (out / lost).exists()
    again = json.loads((out / "metrics.json").read_text())
    first = json.loads(written["metrics.json"])
    assert again["epochs"] == first["epochs"] and again["config"] == first["config"]
    assert again["confusion_matrix"] == first["confusion_matrix"]


def test_a_signal_while_the_reports_are_written_waits_for_them_and_is_dropped(
    image_tree, tmp_path, monkeypatch, capsys
):
    # The run is done: it once stopped, saying "before the reports were written" (exit 130)
    # of reports that were then written whole, or left them for a resume to write.
    from jaxcifar import plots

    draw = plots.plot_confusion_matrix

    def interrupted_while_drawing(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)  # the handler runs within it: it must not raise
        return draw(*args, **kwargs)

    monkeypatch.setattr(plots, "plot_confusion_matrix", interrupted_while_drawing)
    out = tmp_path / "run"
    assert main(["train", "--data-dir", str(image_tree), "--out", str(out), *FAST]) == 0
    assert "interrupted" not in capsys.readouterr().err
    assert json.loads((out / "metrics.json").read_text())["test_accuracy"] >= 0


def test_a_stop_while_a_resume_draws_its_figures_leaves_the_next_resume_to_draw_them(
    image_tree, tmp_path, monkeypatch
):
    # metrics.json is written after the figures: one listing the new epoch would say the run
    # is finished while the old confusion matrix stays. (A kill, or an error such as a full
    # disk, stops it there; a signal waits for the reports, above.)
    from jaxcifar import plots
    from jaxcifar.interrupt import Interrupted

    out = tmp_path / "run"
    args = ["train", "--data-dir", str(image_tree), "--out", str(out), *FAST]
    assert main([*args, "--epochs", "1"]) == 0
    first_matrix = (out / "confusion_matrix.png").read_bytes()

    def interrupted(*args, **kwargs):
        raise Interrupted(signal.SIGINT)

    with monkeypatch.context() as patch:
        patch.setattr(plots, "plot_confusion_matrix", interrupted)
        assert main([*args, "--epochs", "3", "--resume"]) == 128 + signal.SIGINT
    assert len(json.loads((out / "metrics.json").read_text())["epochs"]) == 1
    assert main([*args, "--resume"]) == 0
    report = json.loads((out / "metrics.json").read_text())
    assert len(report["epochs"]) == 3
    assert (out / "confusion_matrix.png").read_bytes() != first_matrix  # drawn for 3 epochs


@pytest.mark.parametrize("reports, schedule", [("kept", "constant"), ("lost", "constant"),
                                               ("kept", "cosine")])  # fmt: skip
def test_a_resume_to_fewer_epochs_than_the_run_trained_is_refused(
    image_tree, tmp_path, capsys, reports, schedule
):
    # Nothing would be trained, and without reports metrics.json would pair epochs: 1 in its
    # configuration with two epochs of records. Under a cosine schedule the changed epochs
    # are also a change of configuration, whose advice (add --override-config) would not do.
    out = tmp_path / "run"
    args = ["train", "--data-dir", str(image_tree), "--out", str(out), "--schedule", schedule,
            *FAST]  # fmt: skip
    assert main([*args, "--epochs", "2"]) == 0
    if reports == "lost":
        (out / "metrics.json").unlink()
    files = {path: path.read_bytes() for path in out.iterdir()}
    capsys.readouterr()
    assert main([*args, "--epochs", "1", "--resume"]) == 2
    assert capsys.readouterr().err == (
        f"jaxcifar train: error: --epochs 1: {out / checkpoint.FILENAME} has trained 2 epochs "
        "already; a resume continues the run, to --epochs 2 or more\n"
    )
    assert {path: path.read_bytes() for path in out.iterdir()} == files


def test_a_bare_resume_continues_the_run_as_saved(image_tree, tmp_path):
    # Its lr, augmentation and dtype, not the defaults of the flags left out, to the same
    # parameters as an uninterrupted run; metrics.json then describes the run it made.
    flags = ["--data-dir", str(image_tree), *FAST, "--lr", "0.02", "--augment", "--dtype",
             "bfloat16"]  # fmt: skip
    assert main(["train", *flags, "--epochs", "2", "--out", str(tmp_path / "whole")]) == 0
    assert main(["train", *flags, "--epochs", "1", "--out", str(tmp_path / "run")]) == 0
    bare = ["train", "--data-dir", str(image_tree), "--quiet", "--epochs", "2", "--resume"]
    assert main([*bare, "--out", str(tmp_path / "run")]) == 0
    whole, resumed = (checkpoint.load(tmp_path / name) for name in ("whole", "run"))
    assert resumed.config == whole.config and whole.config.lr == 0.02
    jax.tree.map(np.testing.assert_array_equal, whole.state, resumed.state)
    reports = [json.loads((tmp_path / n / "metrics.json").read_text()) for n in ("whole", "run")]
    assert reports[1]["config"] == reports[0]["config"]
    assert reports[1]["confusion_matrix"] == reports[0]["confusion_matrix"]


def test_resume_refuses_changed_flags_unless_told_to_override_them(image_tree, tmp_path, capsys):
    out = tmp_path / "run"
    common = ["train", "--data-dir", str(image_tree), "--out", str(out), *FAST]
    assert main([*common, "--epochs", "1", "--lr", "0.02", "--augment"]) == 0
    before = (out / checkpoint.FILENAME).read_bytes()
    capsys.readouterr()
    changed = [*common, "--epochs", "2", "--lr", "0.001", "--no-augment", "--dtype", "bfloat16",
               "--resume"]  # fmt: skip
    assert main(changed) == 2
    assert capsys.readouterr().err == (
        f"jaxcifar train: error: {out / checkpoint.FILENAME} was made with another configuration "
        "(lr: 0.02 -> 0.001; augment: True -> False; dtype: 'float32' -> 'bfloat16'); drop those "
        "flags to continue the run as saved, or add --override-config to change them\n"
    )
    assert (out / checkpoint.FILENAME).read_bytes() == before
    assert main([*changed, "--override-config"]) == 0
    config = json.loads((out / "metrics.json").read_text())["config"]
    changed_fields = [config[name] for name in ("epochs", "lr", "augment", "dtype")]
    assert changed_fields == [2, 0.001, False, "bfloat16"]
    # A test subset of another size changes the evaluation only: no override needed; each
    # epoch records how many examples it was tested on, and the resume says they differ.
    capsys.readouterr()
    assert main([*common, "--epochs", "3", "--limit-test", "10", "--resume"]) == 0
    report = json.loads((out / "metrics.json").read_text())
    assert np.sum(report["confusion_matrix"]) == 10
    assert [record["test_examples"] for record in report["epochs"]] == [20, 20, 10]
    assert ("jaxcifar train: note: earlier epochs of this run were tested on 20 examples, "
            "this resume tests on 10 (--limit-test)") in capsys.readouterr().err  # fmt: skip


def test_resume_from_a_missing_folder_leaves_none_behind(tmp_path, capsys):
    out = tmp_path / "mistyped"
    assert main(["train", "--resume", "--out", str(out)]) == 2
    assert capsys.readouterr().err == (
        f"jaxcifar train: error: {out / checkpoint.FILENAME}: no checkpoint there\n"
    )
    assert not out.exists()


def test_a_default_compile_cache_that_cannot_be_made_is_off_with_a_warning(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("JAXCIFAR_CACHE", str(tmp_path / "file"))
    with pytest.warns(UserWarning, match=f"compiled programs are not cached: cannot make "
                      f"{tmp_path / 'file' / 'xla'} \\(Not a directory"):  # fmt: skip
        assert xla_cache.resolve(None) is None  # else JAX warns at every compile
    monkeypatch.setenv("JAXCIFAR_CACHE", str(tmp_path / "cache"))
    assert xla_cache.resolve(None) == tmp_path / "cache" / "xla"
    assert xla_cache.resolve("none") is None and xla_cache.resolve("d") == Path("d")


def test_resume_from_a_speedrun_folder_says_what_it_holds(tmp_path, capsys, save_speedrun_model):
    path = save_speedrun_model(tmp_path)
    assert main(["train", "--resume", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err == (
        f"jaxcifar train: error: {tmp_path / checkpoint.FILENAME}: no checkpoint there; {path} is "
        "a speedrun model (written by jaxcifar speedrun), which jaxcifar evaluate and "
        "predict read but train --resume cannot continue\n"
    )


def test_the_resume_line_keeps_a_multi_process_runs_place_in_its_job():
    # Without them, the printed line would resume one process of a multi-host run alone.
    from jaxcifar.cli import build_parser
    from jaxcifar.commands.train import resume_command

    argv = ["train", "--out", "runs/x", "--lr", "0.1", "--data-dir", "/data", "--coordinator",
            "10.0.0.1:1234", "--num-processes", "2", "--process-id", "1"]  # fmt: skip
    args = build_parser().parse_args(argv)
    assert resume_command(args, with_config=False) == (
        "jaxcifar train --resume --out runs/x --data-dir /data --coordinator 10.0.0.1:1234 "
        "--num-processes 2 --process-id 1"
    )
    assert " --lr 0.1 " in resume_command(args, with_config=True)


def test_the_resume_line_names_a_data_dir_given_by_the_variable(monkeypatch):
    # The line may be pasted in a shell without $JAXCIFAR_DATA_DIR, where it would download.
    from jaxcifar.cli import build_parser
    from jaxcifar.commands.train import resume_command

    monkeypatch.setenv("JAXCIFAR_DATA_DIR", "/data/cifar")
    line = resume_command(build_parser().parse_args(["train", "--out", "r"]), with_config=False)
    assert line == "jaxcifar train --resume --out r --data-dir /data/cifar"
    given = build_parser().parse_args(["train", "--out", "r", "--data-dir", "/mine"])
    assert resume_command(given, with_config=False) == (
        "jaxcifar train --resume --out r --data-dir /mine"
    )


def test_the_resume_line_keeps_paths_that_start_with_a_dash_as_values():
    # `--out -run` in the printed line: argparse took -run for a flag ("expected one argument").
    from jaxcifar.cli import build_parser
    from jaxcifar.commands.train import resume_command

    argv = ["train", "--out=-run", "--data-dir=-data", "--compile-cache=-xla"]
    line = resume_command(build_parser().parse_args(argv), with_config=False)
    assert line == "jaxcifar train --resume --out=-run --data-dir=-data --compile-cache=-xla"
    again = build_parser().parse_args(shlex.split(line)[1:])
    assert (str(again.out), str(again.data_dir), again.compile_cache) == ("-run", "-data", "-xla")


def test_compile_cache_off_sets_no_folder_and_writes_none(tmp_path, monkeypatch):
    # Before: str(None) pointed JAX at a folder named "None" in the working directory.
    monkeypatch.chdir(tmp_path)

    def shifted(x):  # a program no other test compiles, so it is compiled here
        return x * 3.0 - 5.0

    with xla_cache.compilation_cache(None):
        assert jax.config.jax_compilation_cache_dir is None
        jax.jit(shifted).lower(jnp.ones(3)).compile()
    assert not (tmp_path / "None").exists() and not any(tmp_path.iterdir())


def test_compile_cache_settings_return_to_their_previous_values_on_exit(tmp_path):
    # Else JAX keeps writing every later program into the block's folder.
    names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs")
    before = {name: getattr(jax.config, name) for name in names}
    with xla_cache.compilation_cache(tmp_path / "cache"):
        assert jax.config.jax_compilation_cache_dir == str(tmp_path / "cache")
        assert jax.config.jax_persistent_cache_min_compile_time_secs == 0.0
    assert {name: getattr(jax.config, name) for name in names} == before
    assert before["jax_compilation_cache_dir"] != str(tmp_path / "cache")


def test_seed_picks_the_examples_limit_test_keeps(image_tree, tmp_path):
    # --seed chooses the --limit-train / --limit-test subsets too (its help says so).
    from jaxcifar.data import load_split

    out = tmp_path / "run"
    args = ["train", "--data-dir", str(image_tree), "--epochs", "1", "--seed", "3",
            "--limit-test", "10", "--out", str(out), *FAST]  # fmt: skip
    assert main(args) == 0
    matrix = np.array(json.loads((out / "metrics.json").read_text())["confusion_matrix"])
    kept = [load_split("cifar10", "test", data_dir=image_tree, limit=10, seed=seed)
            for seed in (3, 0)]  # fmt: skip
    counts = [np.bincount(subset.labels, minlength=10) for subset in kept]
    assert not np.array_equal(*counts)  # another seed keeps other classes
    np.testing.assert_array_equal(matrix.sum(axis=1), counts[0])


def test_resuming_a_run_whose_reports_stop_short_of_its_checkpoint_writes_them(
    image_tree, tmp_path, monkeypatch
):
    # Stopped after epoch 2's checkpoint, before its reports: OUT still holds epoch 1's,
    # every figure included. The resume must write epoch 2's, not say "already trained".
    from jaxcifar import reports

    out = tmp_path / "run"
    args = ["train", "--data-dir", str(image_tree), "--out", str(out), *FAST]
    assert main([*args, "--epochs", "1"]) == 0
    with monkeypatch.context() as patch:
        patch.setattr(reports, "write_reports", lambda *args, **kwargs: None)  # killed there
        assert main([*args, "--epochs", "2", "--resume"]) == 0
    assert len(json.loads((out / "metrics.json").read_text())["epochs"]) == 1
    assert main([*args, "--resume"]) == 0
    assert len(json.loads((out / "metrics.json").read_text())["epochs"]) == 2


def test_a_stopped_resume_names_the_newest_epoch_its_checkpoint_keeps(
    image_tree, tmp_path, monkeypatch, capsys
):
    # Once a resume saves epochs of its own, its messages name the newest checkpoint: a
    # signal after the last epoch's leaves only the reports to write; a divergence two saved
    # epochs later keeps epoch 4, not the epoch the resume started from.
    from jaxcifar import train
    from jaxcifar.errors import TrainingDiverged

    out = tmp_path / "run"
    args = ["train", "--data-dir", str(image_tree), "--out", str(out), *FAST]
    assert main([*args, "--epochs", "1"]) == 0

    def saving_epochs_until(last, then):  # a fit that saves epochs up to `last`, then `then()`
        def fit(config, train_set, test_set, *, state, history, on_epoch_end, **kwargs):
            history = list(history)
            while len(history) < last:
                history.append({**history[-1], "epoch": len(history) + 1})  # a full record
                on_epoch_end(state, history)
            then()

        return fit

    def sigterm():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # interrupted within the sleep

    def diverge():
        raise TrainingDiverged("loss became nan at epoch 5 step 1")

    monkeypatch.setattr(train, "fit", saving_epochs_until(2, sigterm))
    capsys.readouterr()
    assert main([*args, "--epochs", "2", "--resume"]) == 143
    resume = ["jaxcifar", "train", "--resume", "--out", str(out), "--data-dir", str(image_tree),
              "--quiet"]  # fmt: skip
    assert capsys.readouterr().err == (
        "jaxcifar train: interrupted by SIGTERM after the last epoch, before the reports were "
        f"written (resuming writes them); {out / checkpoint.FILENAME} keeps epoch 2/2; "
        f"resume with: {shlex.join(resume)}\n"
    )
    monkeypatch.setattr(train, "fit", saving_epochs_until(4, diverge))
    assert main([*args, "--epochs", "5", "--resume"]) == 2
    assert capsys.readouterr().err == (
        "jaxcifar train: error: loss became nan at epoch 5 step 1; "
        f"{out / checkpoint.FILENAME} keeps the last good state (epoch 4)\n"
    )


def test_the_resume_line_keeps_the_epoch_mode_and_a_flag_turned_off():
    from jaxcifar.cli import build_parser
    from jaxcifar.commands.train import resume_command

    argv = ["train", "--out", "runs/x", "--no-augment", "--epoch-mode", "loop"]
    args = build_parser().parse_args(argv)
    assert resume_command(args, with_config=False) == (
        "jaxcifar train --resume --out runs/x --epoch-mode loop"
    )
    assert resume_command(args, with_config=True) == (
        "jaxcifar train --resume --out runs/x --no-augment --epoch-mode loop"
    )


def test_the_cnn_on_images_too_small_to_pool_twice_is_a_data_error_not_a_traceback(
    tmp_path, fresh_cache, capsys
):
    write_tree(tmp_path / "tiny", size=(5, 3))  # 3 rows of 5: pooled twice, no row is left
    args = ["train", "--data-dir", str(tmp_path / "tiny"), "--epochs", "1", "--quiet",
            "--batch-size", "2", "--out", str(tmp_path / "run")]  # fmt: skip
    assert main(args) == 2
    assert capsys.readouterr().err == (
        f"jaxcifar train: error: {tmp_path / 'tiny'} (--data-dir) holds images of (H, W) "
        "(3, 5): the CNN pools them to 1/4 a side, so it needs 4x4 or larger; train --model mlp "
        "on them\n"
    )
    assert main([*args[:-1], str(tmp_path / "mlp"), "--model", "mlp"]) == 0


def test_the_cnn_checks_the_width_as_well_and_takes_the_smallest_images_it_can_pool(
    tmp_path, fresh_cache, capsys
):
    # 3 pixels wide, 5 high: the width is the side pooled away. 4x4 pools twice to 1x1.
    write_tree(tmp_path / "narrow", size=(3, 5))
    write_tree(tmp_path / "four", size=(4, 4))
    args = ["train", "--epochs", "1", "--quiet", "--batch-size", "2", "--compile-cache", "none"]
    narrow = ["--data-dir", str(tmp_path / "narrow"), "--out", str(tmp_path / "run-narrow")]
    assert main([*args, *narrow]) == 2
    assert "holds images of (H, W) (5, 3): the CNN pools" in capsys.readouterr().err
    four = ["--data-dir", str(tmp_path / "four"), "--out", str(tmp_path / "run-four")]
    assert main([*args, *four]) == 0
    report = json.loads((tmp_path / "run-four" / "metrics.json").read_text())
    assert report["config"]["model"] == "cnn" and len(report["epochs"]) == 1


def test_a_stopped_process_other_than_0_leaves_the_resume_line_to_process_0(
    image_tree, tmp_path, monkeypatch, capsys
):
    # It saves nothing, so it said "no epoch finished, so nothing is saved; start again with
    # the same command" while process 0 kept epoch 55 and printed how to resume it.
    from jaxcifar import parallel, train
    from jaxcifar.interrupt import Interrupted

    def stopped(*args, **kwargs):
        raise Interrupted(signal.SIGTERM)

    monkeypatch.setattr(parallel, "is_main_process", lambda: False)
    monkeypatch.setattr(train, "fit", stopped)
    argv = ["train", "--data-dir", str(image_tree), "--out", str(tmp_path / "run"), *FAST]
    assert main(argv) == 128 + signal.SIGTERM
    assert capsys.readouterr().err == (
        "jaxcifar train: interrupted by SIGTERM; process 0 writes the checkpoint and says how "
        "to resume\n"
    )


def test_a_bare_resume_and_evaluate_read_the_data_the_run_was_trained_on(
    tmp_path, fresh_cache, monkeypatch, capsys
):
    # Without --data-dir or $JAXCIFAR_DATA_DIR, both went to download CIFAR-10's release
    # (170 MB) for a run trained on the user's own folder, then refused it as other data.
    monkeypatch.delenv("JAXCIFAR_DATA_DIR", raising=False)
    monkeypatch.setattr("jaxcifar.data.download.fetch",
                        lambda *args: pytest.fail("went to download"))  # fmt: skip
    write_tree(tmp_path / "mine", per_class=4, size=(6, 6))
    run = tmp_path / "run"
    common = ["--model", "mlp", "--mlp-hidden", "4", "--batch-size", "2", "--compile-cache",
              "none", "--quiet", "--out", str(run)]  # fmt: skip
    monkeypatch.chdir(tmp_path)  # given relative, recorded absolute: read from anywhere
    assert main(["train", "--data-dir", "mine", "--epochs", "1", *common]) == 0
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    capsys.readouterr()
    assert main(["train", "--resume", "--epochs", "2", *common]) == 0
    assert f"from {tmp_path / 'mine'} (recorded in the checkpoint; no --data-dir given)" in (
        capsys.readouterr().out
    )
    assert [r["epoch"] for r in json.loads((run / "metrics.json").read_text())["epochs"]] == [1, 2]
    assert main(["evaluate", "--checkpoint", str(run)]) == 0
    out, err = capsys.readouterr()
    assert f"{run / 'checkpoint.msgpack'}: test loss " in out
    assert err == (f"jaxcifar evaluate: note: no --data-dir given: testing on {tmp_path / 'mine'},"
                   " the data the checkpoint recorded it was trained on\n")  # fmt: skip
    # A resume onto another --dataset does not read the record: it is the other dataset's.
    with pytest.raises(pytest.fail.Exception, match="went to download"):
        main(["train", "--resume", "--epochs", "3", "--dataset", "mnist", "--override-config",
              *common])  # fmt: skip
    # Moved away, it is not looked for: the usual default, here the (failing) download.
    (tmp_path / "mine").rename(tmp_path / "moved")
    with pytest.raises(pytest.fail.Exception, match="went to download"):
        main(["evaluate", "--checkpoint", str(run)])


def test_processes_given_other_pictures_of_the_same_labels_differ_in_their_data_facts():
    # The facts compared labels, shape and classes only: hosts given other pictures sorted
    # into the same classes trained together without a word.
    from jaxcifar.commands.train import _run_facts, _training_data
    from jaxcifar.config import RunConfig
    from jaxcifar.data import Dataset

    labels = np.arange(4, dtype=np.int32) % 2
    ours = Dataset(np.zeros((4, 2, 2, 3), np.uint8), labels, ("a", "b"))
    theirs = Dataset(np.full((4, 2, 2, 3), 9, np.uint8), labels, ("a", "b"))
    facts = [_run_facts(RunConfig(), "chunk", data, data, None, 0, _training_data(data))
             for data in (ours, theirs)]  # fmt: skip
    assert facts[0]["training data"] != facts[1]["training data"]
    assert facts[0]["training data"].startswith("4 x (2, 2, 3), ")
    assert {k: v for k, v in facts[0].items() if "data" not in k} == {
        k: v for k, v in facts[1].items() if "data" not in k
    }
