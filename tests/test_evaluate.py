"""`jaxcifar evaluate` of a training checkpoint: its metrics.json says what it evaluated.

(A speedrun model's evaluation is tested with the speedrun, in test_speedrun.py.)
"""

import json

import numpy as np

from jaxcifar import checkpoint
from jaxcifar.cli import main
from jaxcifar.data import load_split


def test_evaluate_records_the_test_subset_it_used_beside_the_runs_config(
    shared_data, tmp_path, capsys
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
