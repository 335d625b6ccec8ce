"""`jaxcifar scratch`: the command trains the network `jaxcifar.scratch` trains with the same
settings, on the same subsets, and reports it as such."""

import json

import numpy as np
import pytest

from jaxcifar import scratch
from jaxcifar.cli import main
from jaxcifar.data import load_split
from data_files import write_idx_set


def write_learnable_idx_set(folder):
    """30 train and 20 test 5x3 MNIST-format images (not gzipped) whose label is the index of
    their one bright pixel."""

    def draw(rng, n):
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        images = rng.integers(0, 100, (n, 5, 3), dtype=np.uint8)
        images.reshape(n, -1)[np.arange(n), labels] = 255
        return images, labels

    write_idx_set(folder, n_train=30, n_test=20, gz=False, draw=draw)


def test_scratch_names_the_data_it_read(tmp_path, fresh_cache, capsys):
    # It printed "mnist: 30 train, 20 test" for a user's own folder read as mnist.
    write_learnable_idx_set(tmp_path / "data")
    out = tmp_path / "run"
    assert main(["scratch", "--dataset", "mnist", "--data-dir", str(tmp_path / "data"),
                 "--epochs", "1", "--hidden", "4", "--out", str(out)]) == 0  # fmt: skip
    assert capsys.readouterr().out.startswith(
        f"data: 30 train / 20 test examples from {tmp_path / 'data'}; network 15-4-10, lr "
    )


def test_scratch_leaves_no_other_commands_figures_beside_its_reports(tmp_path, fresh_cache):
    # An evaluation's loss.png and confusion_matrix.png in its --out passed for the scratch
    # run's.
    write_learnable_idx_set(tmp_path / "data")
    out = tmp_path / "run"
    out.mkdir()
    for name in ("loss.png", "confusion_matrix.png", "accuracy.png", "notes.txt"):
        (out / name).write_text("earlier")
    (out / "metrics.json").write_text('{"config": {}, "epochs": [], "test_accuracy": 0.5}')
    assert main(["scratch", "--dataset", "mnist", "--data-dir", str(tmp_path / "data"),
                 "--epochs", "1", "--hidden", "4", "--out", str(out)]) == 0  # fmt: skip
    assert sorted(path.name for path in out.iterdir()) == [
        "accuracy.png", "error.png", "metrics.json", "notes.txt"
    ]
    assert (out / "accuracy.png").read_bytes().startswith(b"\x89PNG")


def without_seconds(history):
    return [{key: value for key, value in record.items() if key != "seconds"} for record in history]


@pytest.mark.parametrize("decay", ["constant", "linear"])
def test_scratch_command_trains_as_the_library_does_with_its_flags(tmp_path, fresh_cache, decay):
    # Every flag reaches the training: the rate's decay, the seed of the weights, subsets and
    # shuffles, the float type; else the run reports another network than the one asked for.
    data = tmp_path / "data"
    write_learnable_idx_set(data)
    out = tmp_path / "run"
    assert main([
        "scratch", "--dataset", "mnist", "--data-dir", str(data), "--epochs", "6",
        "--batch-size", "3", "--lr", "10", "--lr-decay", decay, "--hidden", "6", "--seed", "3",
        "--dtype", "float64", "--limit-train", "25", "--limit-test", "15", "--out", str(out),
    ]) == 0  # fmt: skip
    metrics = json.loads((out / "metrics.json").read_text())

    splits = [load_split("mnist", split, data_dir=data, limit=limit, seed=3)
              for split, limit in (("train", 25), ("test", 15))]  # fmt: skip
    x_train, x_test = (scratch.scale_pixels(split.images, "float64") for split in splits)
    network = scratch.initialize_network([15, 6, 10], seed=3, dtype="float64")
    _, history = scratch.train(
        network, x_train, splits[0].labels, l_rate=10.0, n_epoch=6, batch_size=3,
        x_test=x_test, y_test=splits[1].labels, seed=3, decay=decay == "linear",
    )  # fmt: skip
    assert without_seconds(metrics["epochs"]) == without_seconds(history)
    assert metrics["test_accuracy"] == history[-1]["test_accuracy"]  # the last, not the best
    assert {key: metrics["config"][key] for key in ("lr_decay", "seed", "dtype")} == {
        "lr_decay": decay, "seed": 3, "dtype": "float64"
    }


def test_scratch_command_reports_a_diverging_rate_in_one_line_naming_no_library_argument(
    tmp_path, fresh_cache, capsys
):
    # The message once named the library's `l_rate`, which the command line has no flag for;
    # and an epoch whose last steps overflowed the weights passed, its error summed before
    # them, so the test set's scoring warned of NaNs and epoch 2 reported the divergence.
    data = tmp_path / "data"
    write_learnable_idx_set(data)
    out = tmp_path / "run"
    assert main(["scratch", "--dataset", "mnist", "--data-dir", str(data), "--epochs", "2",
                 "--lr", "1e300", "--out", str(out)]) == 2  # fmt: skip
    assert capsys.readouterr().err == (
        "jaxcifar scratch: error: epoch 1: the weights went non-finite; lower the learning rate "
        "(now 1e+300)\n"
    )
    assert not out.exists()


def test_scratch_command_refuses_a_rate_its_dtype_rounds_to_0(tmp_path, capsys):
    # --lr 1e-50 in float32 trained a network that never moved, and reported it.
    assert main(["scratch", "--lr", "1e-50", "--out", str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err == (
        "jaxcifar scratch: error: --lr 1e-50 is below float32's smallest normal number, "
        "1.18e-38, where it rounds to 0 or loses its precision (--dtype float32)\n"
    )
    assert not (tmp_path / "run").exists()


def test_scratch_leaves_a_training_runs_reports_to_it(tmp_path, capsys):
    # Its metrics.json and accuracy.png replaced the run's, and the run's resume then took
    # them for its own and said "already trained".
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint.msgpack").write_bytes(b"a training run's")
    assert main(["scratch", "--data-dir", str(tmp_path / "nowhere"), "--out", str(run)]) == 2
    assert capsys.readouterr().err == (
        f"jaxcifar scratch: error: --out {run} holds a training run (checkpoint.msgpack), "
        "whose reports this would replace; pick another --out\n"
    )
    assert [path.name for path in run.iterdir()] == ["checkpoint.msgpack"]


def test_a_signal_while_scratch_writes_its_reports_waits_for_the_whole_set(
    tmp_path, fresh_cache, sigterm_while_drawing, capsys
):
    # SIGTERM after metrics.json left the figures of an earlier run into that folder beside it.
    data, out = tmp_path / "data", tmp_path / "run"
    write_learnable_idx_set(data)
    sigterm_while_drawing()
    assert main(["scratch", "--dataset", "mnist", "--data-dir", str(data), "--epochs", "1",
                 "--out", str(out)]) == 143  # fmt: skip
    assert capsys.readouterr().err == "jaxcifar scratch: interrupted by SIGTERM\n"
    assert sorted(path.name for path in out.iterdir()) == [
        "accuracy.png", "error.png", "metrics.json"
    ]
