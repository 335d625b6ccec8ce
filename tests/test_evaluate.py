"""`jaxcifar evaluate` of a training checkpoint: its metrics.json says what it evaluated.

(A speedrun model's evaluation is tested with the speedrun, in test_speedrun.py.)
"""

import json

import numpy as np

from jaxcifar import checkpoint
from jaxcifar.cli import main
from jaxcifar.data import load_split
from data_files import write_idx_set


def test_evaluate_records_the_test_subset_it_used_beside_the_runs_config(
    shared_data, tmp_path, capsys, monkeypatch
):
    # Before: config.limit_test said the run's 20 while the confusion matrix summed to 40,
    # and nothing said that the report was an evaluation, of which file, on which subset.
    run = tmp_path / "run"
    assert main([
        "train", "--data-dir", str(shared_data), "--model", "mlp", "--mlp-hidden", "8",
        "--batch-size", "8", "--epochs", "1", "--limit-train", "32", "--limit-test", "20",
        "--seed", "3", "--compile-cache", "none", "--quiet", "--out", str(run),
    ]) == 0  # fmt: skip
    evaluated = tmp_path / "eval"
    argv = ["evaluate", "--checkpoint", str(run), "--data-dir", str(shared_data)]
    assert main([*argv, "--limit-test", "40", "--out", str(evaluated)]) == 0
    printed = capsys.readouterr().out
    report = json.loads((evaluated / "metrics.json").read_text())
    assert "accuracy" in printed
    for name, accuracy in report["per_class_accuracy"].items():  # a line for every class
        shown = "-" if accuracy is None else f"{accuracy:.4f}"
        assert f"\n  {name:>12}: {shown}\n" in printed
    assert report["config"]["limit_test"] == 20  # the run's configuration, as it trained
    tested = load_split("cifar10", "test", data_dir=shared_data, limit=40, seed=3)
    loss = report["evaluated"].pop("test_loss")  # of the 40 evaluated, not the run's 20
    assert f"test loss {loss:.4f}, accuracy {report['test_accuracy']:.4f} on 40 " in printed
    assert report["evaluated"] == {
        "checkpoint": str(run / checkpoint.FILENAME), "test_data": tested.source,
        "limit_test": 40, "subset_seed": 3, "test_examples": 40,
    }  # fmt: skip
    class_counts = np.bincount(tested.labels, minlength=10)
    np.testing.assert_array_equal(np.sum(report["confusion_matrix"], axis=1), class_counts)
    # Without --limit-test: the run's own test subset.
    assert main([*argv, "--out", str(evaluated)]) == 0
    report = json.loads((evaluated / "metrics.json").read_text())
    assert report["evaluated"]["limit_test"] == report["evaluated"]["test_examples"] == 20
    # A limit above the split's size tests all of it: the record keeps the limit asked for.
    assert main([*argv, "--limit-test", "20000", "--out", str(evaluated)]) == 0
    report = json.loads((evaluated / "metrics.json").read_text())
    assert (report["evaluated"]["limit_test"], report["evaluated"]["test_examples"]) == (
        20000, len(load_split("cifar10", "test", data_dir=shared_data))
    )  # fmt: skip
    # A relative --checkpoint is recorded absolute: read from another folder (a speedrun
    # replacing the model removes its evaluation), the relative path named nothing.
    monkeypatch.chdir(tmp_path)
    assert main(["evaluate", "--checkpoint", "run", "--data-dir", str(shared_data), "--out",
                 "eval"]) == 0  # fmt: skip
    report = json.loads((evaluated / "metrics.json").read_text())
    assert report["evaluated"]["checkpoint"] == str(run / checkpoint.FILENAME)


def test_evaluate_leaves_a_training_runs_reports_to_it(shared_data, tmp_path, capsys):
    # `evaluate --out RUN` replaced the run's metrics.json and figures with its own (no epoch
    # timings, another test subset), and a run stopped before its reports then took that
    # metrics.json for them: its resume said "already trained" and never wrote its own.
    run = tmp_path / "run"
    train = ["train", "--data-dir", str(shared_data), "--model", "mlp", "--mlp-hidden", "8",
             "--batch-size", "8", "--epochs", "1", "--limit-train", "32", "--limit-test", "20",
             "--compile-cache", "none", "--quiet", "--out", str(run)]  # fmt: skip
    assert main(train) == 0
    reports = {path.name: path.read_bytes() for path in run.iterdir()}
    evaluate = ["evaluate", "--checkpoint", str(run), "--data-dir", str(shared_data)]
    capsys.readouterr()
    assert main([*evaluate, "--out", str(run)]) == 2
    assert capsys.readouterr().err == (
        f"jaxcifar evaluate: error: --out {run} holds a training run (checkpoint.msgpack), "
        "whose reports this would replace; pick another --out\n"
    )
    assert {path.name: path.read_bytes() for path in run.iterdir()} == reports
    # An evaluation's reports in a run's folder (as an older version wrote them there), the
    # run's own lost: its resume writes its own, not "already trained".
    assert main([*evaluate, "--out", str(tmp_path / "eval")]) == 0
    for path in (tmp_path / "eval").iterdir():
        (run / path.name).write_bytes(path.read_bytes())
    assert main([*train, "--resume"]) == 0
    report = json.loads((run / "metrics.json").read_text())
    assert "evaluated" not in report and report == json.loads(reports["metrics.json"]) | {
        "compile_seconds": report["compile_seconds"]
    }


def train_a_tiny_mnist_run(tmp_path):
    """TMP/run: a 1-epoch MLP run on TMP/data, a 16-image MNIST-format set; returns TMP/run."""
    write_idx_set(tmp_path / "data", n_train=16, n_test=8, shape=(8, 8))
    assert main([
        "train", "--dataset", "mnist", "--data-dir", str(tmp_path / "data"), "--model", "mlp",
        "--mlp-hidden", "8", "--batch-size", "8", "--epochs", "1", "--compile-cache", "none",
        "--quiet", "--out", str(tmp_path / "run"),
    ]) == 0  # fmt: skip
    return tmp_path / "run"


def test_a_signal_while_evaluate_writes_its_reports_waits_for_the_whole_set(
    tmp_path, fresh_cache, sigterm_while_drawing, capsys
):
    # SIGTERM between two figures left one figure of three and no metrics.json.
    run, evaluated = train_a_tiny_mnist_run(tmp_path), tmp_path / "eval"
    sigterm_while_drawing()  # once the run has drawn its own
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(run), "--data-dir", str(tmp_path / "data"),
                 "--out", str(evaluated)]) == 143  # fmt: skip
    assert capsys.readouterr().err == "jaxcifar evaluate: interrupted by SIGTERM\n"
    assert sorted(path.name for path in evaluated.iterdir()) == [
        "accuracy.png", "confusion_matrix.png", "loss.png", "metrics.json"
    ]


def test_evaluate_writes_its_reports_though_its_stdout_reader_has_gone(tmp_path, fresh_cache):
    # `jaxcifar evaluate ... --out DIR | head -1`: it printed first, and the closed pipe
    # stopped it before the reports were written.
    import os
    import subprocess
    import sys

    run, evaluated = train_a_tiny_mnist_run(tmp_path), tmp_path / "eval"
    command = [sys.executable, "-m", "jaxcifar", "evaluate", "--checkpoint", str(run),
               "--data-dir", str(tmp_path / "data"), "--out", str(evaluated)]  # fmt: skip
    # Unbuffered, as `python -u` runs it: each line is written (and fails) as it is printed;
    # block-buffered, the same happens once the output passes the buffer (many classes).
    reader = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"})  # fmt: skip
    reader.stdout.close()
    assert reader.wait(timeout=120) == 141 and reader.stderr.read() == b""
    assert sorted(path.name for path in evaluated.iterdir()) == [
        "accuracy.png", "confusion_matrix.png", "loss.png", "metrics.json"
    ]
