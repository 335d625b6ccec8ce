"""Failure modes end to end: signals and kill -9 during `jaxcifar train`, divergence, bad data
and odd images through the command line. docs/failure-modes.md maps each case to its test."""

import functools
import gc
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import zlib
from pathlib import Path

import jax
import numpy as np
import pytest
from PIL import Image

from jaxcifar import checkpoint
from jaxcifar.cli import main
from jaxcifar.data import load
from jaxcifar.data.idx import IMAGES_MAGIC, LABELS_MAGIC
from jaxcifar.interrupt import EXIT_CODES, Interrupted, StopOnSignal, resend_dropped_signals
from data_files import (
    RunsCode, grey_png, idx_bytes, make_batches, py2_dumps, python_batch, rewrite_msgpack,
    write_idx_set, write_release, write_tree,
)

# A tiny MLP on 8x8 MNIST-format images: seconds per run, one compile.
TINY = ["--dataset", "mnist", "--model", "mlp", "--mlp-hidden", "8", "--mlp-activation", "relu",
        "--batch-size", "4", "--quiet"]  # fmt: skip


def one_line_error(capsys, command: str) -> str:
    """The stderr of a failed command: exactly one `jaxcifar CMD: error: ...` line, no traceback."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"jaxcifar {command}: error: "), err
    return lines[0]


def same_params(a: checkpoint.Checkpoint, b: checkpoint.Checkpoint) -> None:
    jax.tree.map(np.testing.assert_array_equal, a.state, b.state)


def without_timings(history):
    return [{k: v for k, v in record.items() if k != "seconds"} for record in history]


# --- Signals: the signal handler itself --------------------------------------------------


def test_signal_raises_at_once_but_waits_for_a_held_block():
    before = [signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)]
    with StopOnSignal() as signals:
        with pytest.raises(Interrupted) as stopped:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # never reached in full: the handler raises within the sleep
        assert (stopped.value.name, stopped.value.exit_code) == ("SIGTERM", 143)
        finished = []
        with pytest.raises(Interrupted) as stopped:
            with signals.hold():
                os.kill(os.getpid(), signal.SIGINT)
                finished.append(True)
        assert finished == [True] and stopped.value.exit_code == 130
    assert [signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)] == before


def test_sighup_stops_as_sigterm_does_unless_the_process_was_started_to_ignore_it():
    # A closed terminal or a dropped ssh session killed the run outright, without its
    # resume line; in a multi-process run the other processes then waited for ever.
    previous = signal.getsignal(signal.SIGHUP)
    try:
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
        with StopOnSignal():
            with pytest.raises(Interrupted) as stopped:
                os.kill(os.getpid(), signal.SIGHUP)
                time.sleep(5)  # never reached in full
        assert stopped.value.exit_code == 129 and 129 in EXIT_CODES
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # as `nohup` starts a command
        with StopOnSignal():
            assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGHUP)  # ignored: nothing raised
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, previous)


def test_a_signal_while_decoding_an_image_stops_rather_than_failing_the_image(monkeypatch):
    from jaxcifar.data import image_file

    def interrupted_open(*args, **kwargs):
        raise Interrupted(signal.SIGINT)  # as StopOnSignal's handler raises it mid-decode

    # The decoder's `except Exception` makes any Pillow failure "not a readable image".
    monkeypatch.setattr(image_file.Image, "open", interrupted_open)
    with pytest.raises(Interrupted):
        image_file.decode(b"\x89PNG", "RGB", "train/cat/0.png")


# --- Signals and kill -9 on real `jaxcifar train` processes -----------------------------

# SIGKILLs its own process when about to rename a second checkpoint over the first: the
# moment a non-atomic writer would leave a half-written checkpoint under the real name.
KILL_AT_SECOND_CHECKPOINT = """
import os, signal, sys
from jaxcifar import cli
rename = os.replace
def replace(src, dst):
    if str(dst).endswith("checkpoint.msgpack") and os.path.exists(dst):
        os.kill(os.getpid(), signal.SIGKILL)
    rename(src, dst)
os.replace = replace
sys.exit(cli.main(sys.argv[1:]))
"""


# Waits at the start of epoch 2, after the first checkpoint, for the test's signal: without
# the pause a tiny run could finish all its epochs before the signal lands.
PAUSE_IN_SECOND_EPOCH = """
import sys, time
from jaxcifar import cli, epochs
run_epoch = epochs.EpochRunner.run
def run(self, state, epoch, report):
    if epoch == 2:
        time.sleep(120)
    return run_epoch(self, state, epoch, report)
epochs.EpochRunner.run = run
sys.exit(cli.main(sys.argv[1:]))
"""


def start_train(args, out, code=None) -> subprocess.Popen:
    launcher = ["-c", code] if code else ["-m", "jaxcifar"]
    command = [sys.executable, *launcher, "train", *args, "--out", str(out)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def stop_all(processes) -> None:
    """Kill and reap every process still running, and close their pipes: a test that fails
    midway leaves no training process behind."""
    for process in processes:
        if process.poll() is None:
            process.kill()
        process.wait()
        for stream in (process.stdout, process.stderr):
            stream.close()


def wait_for_checkpoint(process: subprocess.Popen, out) -> None:
    deadline = time.monotonic() + 240
    while not (out / checkpoint.FILENAME).exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"no checkpoint appeared: {process.communicate()}")
        time.sleep(0.01)


def test_interrupt_kill_and_resume_reproduce_an_uninterrupted_run(tmp_path, fresh_cache):
    write_idx_set(tmp_path / "data", n_train=400, n_test=20, shape=(8, 8))
    # Fill the cache first, so that the processes below do not race to decode the data.
    load("mnist", "train", data_dir=tmp_path / "data")
    args = [*TINY, "--data-dir", str(tmp_path / "data"), "--epochs", "4"]
    runs = {name: tmp_path / name for name in ("whole", "sigint", "sigterm", "sigkill")}
    codes = {"whole": None, "sigint": PAUSE_IN_SECOND_EPOCH,
             "sigterm": PAUSE_IN_SECOND_EPOCH, "sigkill": KILL_AT_SECOND_CHECKPOINT}  # fmt: skip
    processes = {}
    try:
        for name, code in codes.items():
            processes[name] = start_train(args, runs[name], code)
        for name, signum in (("sigint", signal.SIGINT), ("sigterm", signal.SIGTERM)):
            wait_for_checkpoint(processes[name], runs[name])
            processes[name].send_signal(signum)
        results = {name: (p.wait(timeout=300), *p.communicate()) for name, p in processes.items()}
    finally:
        stop_all(processes.values())
    assert results["whole"][0] == 0, results["whole"]

    # kill -9 between writing the new checkpoint and renaming it: the old one is intact.
    code, _, err = results["sigkill"]
    assert code == -signal.SIGKILL, err
    assert len(checkpoint.load(runs["sigkill"]).history) == 1
    leftovers = sorted(p.name for p in runs["sigkill"].iterdir())
    assert leftovers[0].startswith(f".{checkpoint.FILENAME}.") and leftovers[1:] == [
        checkpoint.FILENAME
    ]

    # SIGINT / SIGTERM: exit 130 / 143, the partial epoch dropped, the last checkpoint kept.
    resume_lines = {}
    for name, signame, status in (("sigint", "SIGINT", 130), ("sigterm", "SIGTERM", 143)):
        code, _, err = results[name]
        assert code == status, err
        kept = len(checkpoint.load(runs[name]).history)
        assert kept == 1  # stopped in the pause at the start of epoch 2
        line = err.strip().splitlines()[-1]
        # The checkpoint holds the configuration: the line repeats only how the run executes.
        resume = ["jaxcifar", "train", "--resume", "--out", str(runs[name]),
                  "--data-dir", str(tmp_path / "data"), "--quiet"]  # fmt: skip
        assert line == (
            f"jaxcifar train: interrupted by {signame} before epoch {kept + 1} finished; that "
            f"epoch is dropped; {runs[name] / checkpoint.FILENAME} keeps epoch {kept}/4; "
            f"resume with: {shlex.join(resume)}"
        )
        resume_lines[name] = line.split("resume with: ")[1]
        assert not (runs[name] / "metrics.json").exists()

    # The printed command resumes the run to the same parameters and metrics, bit for bit.
    words = shlex.split(resume_lines["sigint"])
    resumed = subprocess.run(
        [sys.executable, "-m", "jaxcifar", *words[1:]], capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr
    whole, final = checkpoint.load(runs["whole"]), checkpoint.load(runs["sigint"])
    same_params(whole, final)
    assert without_timings(final.history) == without_timings(whole.history)
    metrics = [
        json.loads((runs[name] / "metrics.json").read_text()) for name in ("whole", "sigint")
    ]
    assert metrics[0]["confusion_matrix"] == metrics[1]["confusion_matrix"]


# --- One small run in this process, shared by the tests below -----------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(data dir, run folder of a finished 1-epoch run, its flags)."""
    root = tmp_path_factory.mktemp("trained")
    write_idx_set(root / "data", n_train=64, n_test=20, shape=(8, 8))
    args = [*TINY, "--data-dir", str(root / "data"), "--epochs", "1"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("JAXCIFAR_CACHE", str(root / "cache"))
        assert main(["train", *args, "--out", str(root / "run")]) == 0
    return root / "data", root / "run", args


def test_interrupt_before_the_first_epoch_says_nothing_is_saved(
    trained, tmp_path, fresh_cache, monkeypatch, capsys
):
    from jaxcifar import train

    def interrupted_fit(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(5)  # interrupted within the sleep

    monkeypatch.setattr(train, "fit", interrupted_fit)
    data, _, args = trained
    assert main(["train", *args, "--out", str(tmp_path / "run")]) == 130
    assert capsys.readouterr().err == (
        "jaxcifar train: interrupted by SIGINT before epoch 1 finished; that epoch is dropped; "
        "no epoch finished, so nothing is saved; start again with the same command\n"
    )
    assert not (tmp_path / "run" / checkpoint.FILENAME).exists()


@pytest.mark.parametrize("saves_an_epoch", [False, True])
def test_an_interrupted_resume_repeats_the_flags_its_checkpoint_does_not_hold_yet(
    trained, tmp_path, fresh_cache, monkeypatch, capsys, saves_an_epoch
):
    from jaxcifar import train

    def interrupted_fit(config, train_set, test_set, *, state, history, on_epoch_end, **kwargs):
        if saves_an_epoch:
            on_epoch_end(state, [*history, {**history[-1], "epoch": 2}])  # a full record
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(5)  # interrupted within the sleep

    monkeypatch.setattr(train, "fit", interrupted_fit)
    data, run, _ = trained
    out = tmp_path / "run"
    shutil.copytree(run, out)
    changes = ["--epochs", "3", "--lr", "0.01", "--override-config"]
    execution = ["--data-dir", str(data), "--quiet"]
    assert main(["train", "--resume", "--out", str(out), *changes, *execution]) == 130
    # Until an epoch of the resumed run is saved, the checkpoint holds the old lr and epochs.
    kept = checkpoint.load(out)
    assert (len(kept.history), kept.config.lr) == ((2, 0.01) if saves_an_epoch else (1, 0.001))
    resume = ["jaxcifar", "train", "--resume", "--out", str(out),
              *([] if saves_an_epoch else changes), *execution]  # fmt: skip
    assert capsys.readouterr().err == (
        f"jaxcifar train: interrupted by SIGINT before epoch {len(kept.history) + 1} finished; "
        f"that epoch is dropped; {out / checkpoint.FILENAME} keeps epoch {len(kept.history)}/3; "
        f"resume with: {shlex.join(resume)}\n"
    )


def test_same_seed_gives_the_same_metrics_and_parameters(trained, tmp_path, fresh_cache):
    _, run, args = trained
    assert main(["train", *args, "--out", str(tmp_path / "again")]) == 0
    first, second = (
        json.loads((folder / "metrics.json").read_text()) for folder in (run, tmp_path / "again")
    )
    assert without_timings(first["epochs"]) == without_timings(second["epochs"])
    assert first["confusion_matrix"] == second["confusion_matrix"]
    same_params(checkpoint.load(run), checkpoint.load(tmp_path / "again"))


def test_divergence_stops_and_keeps_the_last_good_checkpoint(
    trained, tmp_path, fresh_cache, capsys
):
    _, run, args = trained
    out = tmp_path / "run"
    shutil.copytree(run, out)
    before = (out / checkpoint.FILENAME).read_bytes()
    capsys.readouterr()
    resume = ["--epochs", "2", "--lr", "1e30", "--override-config", "--resume", "--out", str(out)]
    assert main(["train", *args, *resume]) == 2
    line = one_line_error(capsys, "train")
    assert "loss became nan at epoch 2 step " in line or "loss became inf at epoch 2 step " in line
    assert line.endswith(
        f"lower --lr (now 1e+30); {out / checkpoint.FILENAME} keeps the last good state (epoch 1)"
    )
    assert (out / checkpoint.FILENAME).read_bytes() == before
    assert len(checkpoint.load(out).history) == 1
    # Diverging in epoch 1 leaves nothing to keep: the line says no more, and nothing is written.
    fresh = tmp_path / "fresh"
    assert main(["train", *args, "--epochs", "1", "--lr", "1e30", "--out", str(fresh)]) == 2
    line = one_line_error(capsys, "train")
    assert re.fullmatch(r"jaxcifar train: error: loss became (nan|inf) at epoch 1 step \d+; "
                        r"lower --lr \(now 1e\+30\)", line)  # fmt: skip
    assert not fresh.exists()


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--model", "cnn"], "model: 'mlp' -> 'cnn'"),
        (["--dataset", "fashion_mnist"], "dataset: 'mnist' -> 'fashion_mnist'"),
        (["--batch-size", "8"], "batch_size: 4 -> 8"),
        (["--mlp-hidden", "16", "--override-config"], "state array shapes or dtypes do not fit"),
    ],
)
def test_resume_with_another_config_is_refused(
    trained, tmp_path, fresh_cache, capsys, flags, message
):
    _, shared_run, args = trained
    run = tmp_path / "run"  # a copy: a refusal that broke would train on the shared run
    shutil.copytree(shared_run, run)
    capsys.readouterr()
    assert main(["train", *args, "--epochs", "2", *flags, "--resume", "--out", str(run)]) == 2
    line = one_line_error(capsys, "train")
    assert f"{run / checkpoint.FILENAME}" in line and message in line
    assert len(checkpoint.load(run).history) == 1


def test_override_config_resumes_with_a_compatible_change(trained, tmp_path, fresh_cache):
    _, run, args = trained
    shutil.copytree(run, tmp_path / "run")
    resume = ["train", *args, "--epochs", "2", "--resume", "--out", str(tmp_path / "run"),
              "--batch-size", "8"]  # fmt: skip
    assert main([*resume, "--override-config"]) == 0
    assert [r["epoch"] for r in checkpoint.load(tmp_path / "run").history] == [1, 2]


def test_predict_reads_huge_images_and_refuses_bombs_and_non_images(trained, tmp_path, capsys):
    _, run, _ = trained
    huge = tmp_path / "huge.png"
    Image.new("L", (8000, 8000), 128).save(huge)  # 64 megapixels: under Pillow's limit
    bombs = [tmp_path / "bomb100M.png", tmp_path / "bomb400M.png"]  # between 1x and 2x, over 2x
    for bomb, side in zip(bombs, (10_000, 20_000)):  # a header's promise, a stub of data
        bomb.write_bytes(grey_png(side, side, (b"IDAT", zlib.compress(b"\0")), (b"IEND", b"")))
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    capsys.readouterr()
    assert main(["predict", "--checkpoint", str(run), str(huge), *map(str, bombs), str(text),
                 str(tmp_path)]) == 1  # fmt: skip
    out, err = capsys.readouterr()
    assert [line.split(": ")[0] for line in out.splitlines()] == [str(huge)]
    errors = err.strip().splitlines()
    assert "Traceback" not in err and len(errors) == 4
    for line, name in zip(errors[:2], bombs):
        assert line.startswith(
            f"jaxcifar predict: error: {name}: refused, too large to decode safely (Image size ("
        )
    assert errors[2].startswith(
        f"jaxcifar predict: error: {text}: not a readable image (UnidentifiedImageError"
    )
    assert errors[3] == f"jaxcifar predict: error: {tmp_path}: cannot read (Is a directory)"


def test_predict_prints_one_line_per_image_whatever_its_file_is_called(trained, tmp_path, capsys):
    # A newline in a name split its line; a name that is not UTF-8 printed raw bytes, or
    # failed to print where stdout is strict UTF-8.
    _, run, _ = trained
    names = ["two\nlines.png", os.fsdecode(b"latin-1 \xe9.png"), "caf\u00e9.png"]
    for name in names:
        Image.new("L", (8, 8), 90).save(tmp_path / name, format="PNG")
    capsys.readouterr()
    assert main(["predict", "--checkpoint", str(run), *(str(tmp_path / n) for n in names)]) == 0
    lines = capsys.readouterr().out.splitlines()
    shown = [line.split(": ")[0].removeprefix(f"{tmp_path}/") for line in lines]
    assert shown == ["two\\nlines.png", "latin-1 \\udce9.png", "caf\u00e9.png"]


def bfloat16_copy_recording_dtypes(run, folder, monkeypatch) -> list:
    """`run`'s checkpoint copied into `folder` with its dtype set to bfloat16; returns the list
    into which each apply of a model built from then on notes the dtype it computes in."""
    from jaxcifar import train

    rewrite_msgpack(
        folder / checkpoint.FILENAME, lambda payload: payload["config"].update(dtype="bfloat16"),
        source=run / checkpoint.FILENAME,
    )
    dtypes, build_model = [], train.build_model

    class Recorded:  # the model, noting the dtype each apply computes in
        def __init__(self, model):
            self.model = model

        def __getattr__(self, name):
            return getattr(self.model, name)

        def apply(self, *args, **kwargs):
            dtypes.append(kwargs.get("dtype"))
            return self.model.apply(*args, **kwargs)

    monkeypatch.setattr(train, "build_model", lambda *args: Recorded(build_model(*args)))
    return dtypes


def test_predict_computes_in_the_checkpoints_dtype(trained, tmp_path, monkeypatch, capsys):
    _, run, _ = trained
    dtypes = bfloat16_copy_recording_dtypes(run, tmp_path, monkeypatch)
    image = tmp_path / "digit.png"
    Image.new("L", (8, 8), 90).save(image)
    assert main(["predict", "--checkpoint", str(tmp_path), str(image)]) == 0
    assert capsys.readouterr().out.startswith(f"{image}: ")
    assert dtypes == [jax.numpy.bfloat16]


def test_evaluate_computes_in_the_checkpoints_dtype(trained, tmp_path, fresh_cache, monkeypatch):
    # As training measured its test accuracy and as `predict` computes.
    data, run, _ = trained
    dtypes = bfloat16_copy_recording_dtypes(run, tmp_path, monkeypatch)
    assert main(["evaluate", "--checkpoint", str(tmp_path), "--data-dir", str(data)]) == 0
    assert dtypes and all(dtype == jax.numpy.bfloat16 for dtype in dtypes)


def test_a_checkpoint_whose_weights_give_nan_is_refused_not_scored(
    trained, tmp_path, fresh_cache, capsys
):
    # Its NaN logits scored as class 0 everywhere: `evaluate` printed "test loss nan,
    # accuracy 0.1", `predict` ranked NaN probabilities.
    data, run, _ = trained
    shutil.copytree(run, tmp_path / "run")
    saved = tmp_path / "run" / checkpoint.FILENAME

    def poisoned(payload):
        payload["state"]["params"] = jax.tree.map(
            lambda leaf: np.full_like(leaf, np.nan), payload["state"]["params"]
        )

    rewrite_msgpack(saved, poisoned)
    Image.fromarray(np.full((8, 8), 99, np.uint8)).save(tmp_path / "digit.png")
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(saved), "--data-dir", str(data)]) == 2
    assert one_line_error(capsys, "evaluate") == (
        f"jaxcifar evaluate: error: {saved}: its weights give a non-finite test loss (nan); "
        "a diverged or edited checkpoint"
    )
    assert main(["predict", "--checkpoint", str(saved), str(tmp_path / "digit.png")]) == 2
    assert one_line_error(capsys, "predict") == (
        f"jaxcifar predict: error: {saved}: its weights give non-finite outputs for "
        f"{tmp_path / 'digit.png'}"
    )


# train/<class>/0.png and test/<class>/0.png, gray 8 x 8, for each of `classes`.
gray_tree = functools.partial(write_tree, per_class=1, size=(8, 8), mode="L", fill=40)


@pytest.mark.parametrize(
    "make_data, message",
    [
        (lambda root: write_idx_set(root, n_train=8, n_test=4, shape=(6, 6)),
         "has image shape (H, W, C) (6, 6, 1), but {ckpt} was trained on (8, 8, 1)"),
        (lambda root: gray_tree(root, classes=[f"class{i:02}" for i in range(12)]),
         "has classes ('class00', 'class01', "),  # more classes than the model's 10
        (lambda root: gray_tree(root, classes="abcdefghij"),
         "has classes ('a', 'b', 'c', 'd', 'e', 'f', 'g', 'h', 'i', 'j'), but {ckpt} was trained "
         "on ('0', '1', "),  # as many, other names: the labels would be silently wrong
    ],
)
@pytest.mark.parametrize("command", ["evaluate", "train"])
@pytest.mark.parametrize("origin", ["--data-dir", "$JAXCIFAR_DATA_DIR"])
def test_evaluate_and_resume_refuse_data_unlike_the_checkpoints(
    trained, tmp_path, fresh_cache, capsys, monkeypatch, make_data, message, command, origin
):
    # Data the variable named was called "(--data-dir)", a flag the user never gave.
    _, run, _ = trained
    make_data(tmp_path / "other")
    capsys.readouterr()
    if command == "evaluate":
        argv, split = ["evaluate", "--checkpoint", str(run)], "test"
    else:  # a resume that would train on: the training set is checked before the restore
        run = Path(shutil.copytree(run, tmp_path / "run"))
        argv, split = ["train", "--resume", "--out", str(run), "--epochs", "2"], "train"
    if origin == "--data-dir":
        argv += ["--data-dir", str(tmp_path / "other")]
    else:
        monkeypatch.setenv("JAXCIFAR_DATA_DIR", str(tmp_path / "other"))
    assert main(argv) == 2
    line = one_line_error(capsys, command)
    assert f"the {split} set in {tmp_path / 'other'} ({origin}) " in line
    assert message.format(ckpt=run / checkpoint.FILENAME) in line


def test_a_resume_onto_another_dataset_names_the_one_it_was_trained_on(
    trained, tmp_path, fresh_cache, capsys
):
    # `--dataset fashion_mnist --override-config` on an mnist run was told to "pass the
    # --data-dir of the data it was trained on", a flag the user never changed.
    data, run, _ = trained
    run = Path(shutil.copytree(run, tmp_path / "run"))
    capsys.readouterr()
    assert main(["train", "--resume", "--out", str(run), "--epochs", "2", "--data-dir", str(data),
                 "--dataset", "fashion_mnist", "--override-config"]) == 2  # fmt: skip
    line = one_line_error(capsys, "train")
    assert line.startswith(f"jaxcifar train: error: the train set in {data} (--data-dir) has "
                           "classes ('T-shirt/top', ")  # fmt: skip
    assert line.endswith("'9'); it was trained on --dataset mnist")


def test_a_resume_on_other_training_data_is_refused_unless_overridden(
    trained, tmp_path, fresh_cache, capsys
):
    # Data of the same shape and classes (another --data-dir, another copy of the dataset)
    # went on training without a word; the run's reports then mixed the two.
    data, run, _ = trained
    other = tmp_path / "other"
    write_idx_set(other, n_train=64, n_test=20, shape=(8, 8), seed=1)  # other labels
    resume = ["train", "--resume", "--epochs", "2", "--data-dir", str(other)]
    for name in ("refused", "overridden", "before-the-record"):
        shutil.copytree(run, tmp_path / name)
    capsys.readouterr()
    assert main([*resume, "--out", str(tmp_path / "refused")]) == 2
    assert one_line_error(capsys, "train") == (
        f"jaxcifar train: error: the train set in {other} (--data-dir; 64 examples) is not the "
        f"one {tmp_path / 'refused' / checkpoint.FILENAME} was trained on ({data}; 64 examples, "
        "other images or labels, or in another order); pass the --data-dir it was trained on, "
        "or --override-config to go on training on this data"
    )
    assert main([*resume, "--out", str(tmp_path / "overridden"), "--override-config"]) == 0
    assert checkpoint.load(tmp_path / "overridden").train_data["source"] == str(other)
    # A checkpoint written before the record was kept is not checked.
    saved = tmp_path / "before-the-record" / checkpoint.FILENAME
    rewrite_msgpack(saved, lambda document: document.pop("train_data"))
    assert checkpoint.load(saved).train_data is None
    assert main([*resume, "--out", str(tmp_path / "before-the-record")]) == 0
    # The same data again is no change.
    shutil.copytree(run, tmp_path / "same")
    assert main([*resume[:-1], str(data), "--out", str(tmp_path / "same")]) == 0
    # Other images of the same labels (an image-folder tree of other pictures sorted into the
    # same classes, whose labels are its class counts) trained on without a word.
    def inverted(rng, n):  # the default draw's labels, every pixel inverted
        images = rng.integers(0, 256, (n, 8, 8), dtype=np.uint8)
        return 255 - images, rng.integers(0, 10, n, dtype=np.uint8)

    write_idx_set(tmp_path / "inverted", n_train=64, n_test=20, draw=inverted)
    for name in ("other-pixels", "before-the-pixels"):
        shutil.copytree(run, tmp_path / name)
    resume[-1] = str(tmp_path / "inverted")
    assert main([*resume, "--out", str(tmp_path / "other-pixels")]) == 2
    assert "other images or labels" in one_line_error(capsys, "train")
    # A record written before the pixels' digest was kept is checked without it.
    saved = tmp_path / "before-the-pixels" / checkpoint.FILENAME
    rewrite_msgpack(saved, lambda document: document["train_data"].pop("pixels"))
    assert main([*resume, "--out", str(tmp_path / "before-the-pixels")]) == 0


def test_reports_without_epochs_remove_an_earlier_runs_curves(tmp_path):
    from jaxcifar.reports import FIGURES, build_metrics, write_reports

    for name in FIGURES:
        (tmp_path / name).write_bytes(b"an earlier run's figure")
    report = build_metrics(
        config={"model": "speedrun", "dataset": "cifar10"}, device={}, history=[],
        labels=np.array([0, 1]), predictions=np.array([0, 0]), class_names=("a", "b"),
    )  # fmt: skip
    earlier = {**report, "epochs": [{"epoch": 1}]}  # the earlier run's report, beside them
    (tmp_path / "metrics.json").write_text(json.dumps(earlier))
    write_reports(tmp_path, report)
    assert json.loads((tmp_path / "metrics.json").read_text())["epochs"] == []
    written = sorted(path.name for path in tmp_path.iterdir())
    assert written == ["confusion_matrix.png", "metrics.json"]
    assert (tmp_path / "confusion_matrix.png").read_bytes().startswith(b"\x89PNG")


def test_truncated_checkpoint_through_the_command_line(trained, tmp_path, capsys):
    _, run, _ = trained
    cut = tmp_path / "cut.msgpack"
    cut.write_bytes((run / checkpoint.FILENAME).read_bytes()[:100])
    capsys.readouterr()
    assert main(["predict", "--checkpoint", str(cut), str(cut)]) == 2
    assert f"{cut}: not a readable checkpoint (truncated or corrupt" in one_line_error(
        capsys, "predict"
    )


def test_unwritable_evaluate_output_is_one_line_naming_the_path(
    trained, tmp_path, fresh_cache, capsys
):
    data, run, _ = trained
    blocker = tmp_path / "file"
    blocker.write_text("")
    capsys.readouterr()
    out = blocker / "reports"
    argv = ["evaluate", "--checkpoint", str(run), "--data-dir", str(data), "--out", str(out)]
    assert main(argv) == 2
    expected = f"jaxcifar evaluate: error: --out {out}: cannot write there (Not a directory)"
    assert one_line_error(capsys, "evaluate") == expected


def test_os_errors_and_ctrl_c_in_any_command_are_one_line(monkeypatch, capsys):
    from jaxcifar.commands import data

    def disk_full(args):
        raise OSError(28, "No space left on device", "/runs/x/metrics.json")

    monkeypatch.setattr(data, "run", disk_full)
    assert main(["data", "info"]) == 1
    line = one_line_error(capsys, "data info")
    assert line == "jaxcifar data info: error: No space left on device: /runs/x/metrics.json"

    def signalled(signum):
        def run(args):
            os.kill(os.getpid(), signum)
            time.sleep(5)  # where the signal lands

        return run

    stops = [(signal.SIGINT, 130), (signal.SIGTERM, 143)]
    if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:  # (under nohup it stays ignored)
        stops.append((signal.SIGHUP, 129))
    for signum, status in stops:
        monkeypatch.setattr(data, "run", signalled(signum))
        assert main(["data", "info"]) == status
        name = signal.Signals(signum).name
        assert capsys.readouterr().err == f"jaxcifar data info: interrupted by {name}\n"


def test_ctrl_c_while_the_commands_import_is_one_line(monkeypatch, capsys):
    # Building the parser imports every command module and NumPy: the first ~0.1 s of a run.
    from jaxcifar import cli

    def import_interrupted(name):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli.importlib, "import_module", import_interrupted)
    assert main(["data", "info"]) == 130
    assert capsys.readouterr().err == "jaxcifar: interrupted by SIGINT\n"


# --- Corrupt data through the command line ------------------------------------------------


def truncated_idx(root):
    write_idx_set(root, gz=False)
    images = root / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-7])
    return "mnist", "train-images-idx3-ubyte: truncated: dims (6, 5, 3) need 106 bytes, file has 99"


def wrong_magic(root):
    write_idx_set(root, gz=False)
    (root / "t10k-labels-idx1-ubyte").write_bytes(
        idx_bytes(np.zeros((4, 2, 2), np.uint8), IMAGES_MAGIC)
    )
    return "mnist", "t10k-labels-idx1-ubyte: IDX magic number 0x00000803, expected 0x00000801"


def labels_out_of_range(root):
    write_idx_set(root, gz=False)
    (root / "train-labels-idx1-ubyte").write_bytes(
        idx_bytes(np.array([0, 1, 2, 10, 4, 5], np.uint8), LABELS_MAGIC)
    )
    return "mnist", "train-labels-idx1-ubyte: labels must lie in 0..9; found 0..10"


def malicious_pickle(root):
    write_release(root / "cifar-10-batches-py", make_batches(), python_batch)
    marker = root.parent / "pwned"
    (root / "cifar-10-batches-py" / "data_batch_3").write_bytes(
        py2_dumps({b"data": RunsCode(marker)})
    )
    return "cifar10", "data_batch_3: refusing to unpickle"


def mixed_sizes(root):
    write_tree(root)
    Image.new("RGB", (6, 3)).save(root / "train" / "cat" / "9.png")
    return "cifar10", "train/cat/9.png: image of 6x3 pixels, expected 4x3"


def empty_class_folder(root):
    write_tree(root)
    (root / "train" / "dog").mkdir()
    return "cifar10", "train/dog/: empty class folder"


@pytest.mark.parametrize(
    "corrupt",
    [
        truncated_idx,
        wrong_magic,
        labels_out_of_range,
        malicious_pickle,
        mixed_sizes,
        empty_class_folder,
    ],
)
def test_corrupt_data_is_one_line_naming_the_file(tmp_path, fresh_cache, capsys, corrupt):
    dataset, message = corrupt(tmp_path / "data")
    args = ["train", "--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "run"), *TINY]
    assert main([*args, "--dataset", dataset]) == 2
    assert message in one_line_error(capsys, "train")
    assert not (tmp_path / "pwned").exists()  # the malicious pickle never ran


def _drop_in_gc_callback(error: BaseException) -> None:
    """Raise `error` where Python can only print and drop it: in a garbage-collector callback,
    as a signal landing in JAX's `_xla_gc_callback` does."""

    def callback(phase, info):
        gc.callbacks.remove(callback)
        raise error

    gc.callbacks.append(callback)
    gc.collect()


@pytest.mark.parametrize("when", ["during the block", "as the block ends"])
def test_a_signal_dropped_in_a_gc_callback_is_sent_again(when):
    previous_hook = sys.unraisablehook
    # train's handler raises Interrupted, not KeyboardInterrupt: SIGTERM there, so its own
    # handler (not Python's default, which would end this process) gets the resent signal.
    with pytest.raises(Interrupted) as stop:
        with StopOnSignal(), resend_dropped_signals():
            _drop_in_gc_callback(Interrupted(signal.SIGTERM))
            if when == "during the block":
                time.sleep(5)  # the resent signal interrupts this
                raise AssertionError("the dropped signal was not sent again")
    assert stop.value.signum == signal.SIGTERM
    assert sys.unraisablehook is previous_hook


def test_a_dropped_signal_is_sent_again_within_the_block_not_only_as_it_ends():
    # The resend as the block ends would raise too, and hide a block that ran to its end.
    reached = []
    with pytest.raises(Interrupted):
        with StopOnSignal(), resend_dropped_signals():
            _drop_in_gc_callback(Interrupted(signal.SIGTERM))
            time.sleep(5)  # the resent signal interrupts this
            reached.append("the end of the block")
    assert reached == []


def test_other_exceptions_dropped_within_the_block_still_reach_pythons_hook(monkeypatch):
    # Only the signals' exceptions are taken over: a finaliser's own error is still reported.
    reported = []
    monkeypatch.setattr(sys, "unraisablehook", lambda unraisable: reported.append(unraisable))
    with resend_dropped_signals():
        _drop_in_gc_callback(ValueError("a callback's own bug"))
    assert [str(unraisable.exc_value) for unraisable in reported] == ["a callback's own bug"]


def test_after_finish_a_signal_is_dropped_even_one_held_back():
    with StopOnSignal() as signals:
        with signals.hold():
            os.kill(os.getpid(), signal.SIGINT)
            signals.finish()
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)  # time enough for the handler to run, and raise, if it would


def test_of_two_signals_during_a_held_block_the_first_is_raised():
    with StopOnSignal() as signals:
        with pytest.raises(Interrupted) as stopped:
            with signals.hold():
                os.kill(os.getpid(), signal.SIGINT)
                os.kill(os.getpid(), signal.SIGTERM)
    assert (stopped.value.name, stopped.value.exit_code) == ("SIGINT", 130)
