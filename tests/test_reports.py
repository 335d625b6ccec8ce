"""metrics.json and the figures a run writes (`jaxcifar.reports`)."""

import json

import numpy as np
import pytest

from jaxcifar import plots
from jaxcifar.data.dataset import CIFAR10_CLASSES
from jaxcifar.reports import build_metrics, write_reports

CLASSES = ("cat", "dog", "owl")
# Class 0: 3 examples, 2 right; class 1: 2, 1 right; no owls, though one dog is called an owl.
LABELS = np.array([0, 0, 0, 1, 1])
PREDICTIONS = np.array([0, 0, 1, 1, 2])
HISTORY = [
    {"epoch": 1, "train_loss": 2.0, "train_accuracy": 0.3, "test_loss": 1.9, "test_accuracy": 0.4,
     "seconds": 1.0},
    {"epoch": 2, "train_loss": 1.5, "train_accuracy": 0.5, "test_loss": 1.7, "test_accuracy": 0.6,
     "seconds": 1.0},
]  # fmt: skip


def report(**run):
    return build_metrics(
        config={"model": "cnn", "dataset": "cifar10"}, device={"platform": "cpu"},
        history=HISTORY, labels=LABELS, predictions=PREDICTIONS, class_names=CLASSES, **run,
    )  # fmt: skip


def test_per_class_accuracy_is_each_true_classs_recall_and_null_for_an_absent_class():
    metrics = report()
    # Recall (row-wise), not precision: the owl column holds a prediction, the owl row nothing.
    assert metrics["per_class_accuracy"] == {"cat": 2 / 3, "dog": 0.5, "owl": None}
    assert metrics["class_names"] == list(CLASSES)  # the matrix's rows, in label order
    assert metrics["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [0, 0, 0]]
    assert metrics["test_accuracy"] == 3 / 5
    assert metrics["epochs"] == HISTORY


def test_an_evaluation_has_no_run_keys_and_a_training_run_has_them_all():
    common = {"config", "device", "epochs", "test_accuracy", "class_names", "per_class_accuracy",
              "confusion_matrix"}  # fmt: skip
    assert set(report()) == common
    data = {"source": "x", "train_examples": 5, "test_examples": 5}
    trained = report(compile_seconds=1.5, epoch_mode="chunk", data=data)
    assert set(trained) == common | {"compile_seconds", "epoch_mode", "data"}
    assert (trained["compile_seconds"], trained["epoch_mode"], trained["data"]) == (
        1.5, "chunk", data
    )  # fmt: skip


def test_curves_of_a_run_on_ones_own_classes_name_their_folder(tmp_path, monkeypatch):
    # They were titled "cnn on cifar10": the --dataset the user's photos were read as.
    titles = []
    monkeypatch.setattr(plots, "plot_curves", lambda *args, title, **kwargs: titles.append(title))
    data = {"source": "/photos/pets.tar.gz", "train_examples": 5, "test_examples": 5}
    write_reports(tmp_path, report(data=data))
    assert titles == ["cnn on pets.tar.gz (read as cifar10): accuracy",
                      "cnn on pets.tar.gz (read as cifar10): loss"]  # fmt: skip
    cifar10 = build_metrics(
        config={"model": "cnn", "dataset": "cifar10"}, device={}, history=HISTORY,
        labels=LABELS, predictions=PREDICTIONS, class_names=CIFAR10_CLASSES, data=data,
    )  # fmt: skip
    titles.clear()
    write_reports(tmp_path, cifar10)  # a copy of CIFAR-10 (a JPEG tree) is cifar10
    assert titles == ["cnn on cifar10: accuracy", "cnn on cifar10: loss"]
    # Given as "." (the folder itself), the title named nothing: "cnn on  (read as cifar10)".
    monkeypatch.chdir(tmp_path)
    titles.clear()
    write_reports(tmp_path, report(data={**data, "source": "."}))
    assert titles[0] == f"cnn on {tmp_path.name} (read as cifar10): accuracy"


def test_metrics_json_is_strict_json_and_each_curve_shows_its_own_quantity(tmp_path, monkeypatch):
    curves = {}  # file name -> (epochs, series, ylabel)

    def capture(path, epochs, series, *, ylabel, title):
        curves[path.name] = (epochs, series, ylabel)

    monkeypatch.setattr(plots, "plot_curves", capture)
    write_reports(tmp_path, report())

    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    written = json.loads((tmp_path / "metrics.json").read_text(), parse_constant=refuse)
    assert written["per_class_accuracy"]["owl"] is None
    assert curves == {
        "accuracy.png": ([1, 2], {"train": [0.3, 0.5], "test": [0.4, 0.6]}, "accuracy"),
        "loss.png": ([1, 2], {"train": [2.0, 1.5], "test": [1.9, 1.7]}, "loss"),
    }
    assert (tmp_path / "confusion_matrix.png").read_bytes().startswith(b"\x89PNG")


def test_every_figure_left_beside_the_reports_is_this_reports_own(tmp_path, monkeypatch):
    # A scratch run's error.png stayed beside an evaluation's metrics.json, and an
    # evaluation's curves beside a speedrun model's (which has no epochs).
    monkeypatch.setattr(plots, "plot_curves", lambda path, *a, **k: path.write_bytes(b"curve"))
    for name in ("error.png", "accuracy.png", "loss.png", "notes.txt"):
        (tmp_path / name).write_text("earlier")
    (tmp_path / "metrics.json").write_text(json.dumps({**report(), "epochs": []}))  # scratch's
    write_reports(tmp_path, report())
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "accuracy.png", "confusion_matrix.png", "loss.png", "metrics.json", "notes.txt"
    ]
    assert (tmp_path / "loss.png").read_bytes() == b"curve"
    without_epochs = {**report(), "epochs": []}
    write_reports(tmp_path, without_epochs)
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "confusion_matrix.png", "metrics.json", "notes.txt"
    ]


def test_figures_in_a_folder_without_a_report_of_ours_are_the_users_and_stay(tmp_path):
    # Any error.png, loss.png ... in an --out was removed, though no command of ours wrote it.
    for name in ("error.png", "loss.png", "accuracy.png"):
        (tmp_path / name).write_text("the user's")
    (tmp_path / "metrics.json").write_text('{"accuracy": 0.5}')  # someone else's metrics
    write_reports(tmp_path, {**report(), "epochs": []})
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "accuracy.png", "confusion_matrix.png", "error.png", "loss.png", "metrics.json"
    ]
    assert (tmp_path / "error.png").read_text() == "the user's"


def test_only_an_evaluation_of_the_replaced_model_is_removed_with_it(tmp_path):
    # `speedrun --out DIR` removed any report of ours there: a scratch run's metrics.json
    # and figures too.
    from jaxcifar.reports import remove_evaluation_of

    model, other = tmp_path / "model.msgpack", tmp_path / "other.msgpack"
    model.write_bytes(b"the old model")
    other.write_bytes(b"another model")
    for evaluated in ({}, {"evaluated": {"checkpoint": str(other)}}):  # scratch's; another's
        (tmp_path / "metrics.json").write_text(json.dumps({**report(), **evaluated}))
        (tmp_path / "error.png").write_text("a figure")
        remove_evaluation_of(model)
        assert (tmp_path / "metrics.json").exists() and (tmp_path / "error.png").exists()
    (tmp_path / "metrics.json").write_text(
        json.dumps({**report(), "evaluated": {"checkpoint": str(model)}})
    )
    remove_evaluation_of(model)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["model.msgpack", "other.msgpack"]


def test_no_report_is_removed_beside_a_model_not_written_yet(tmp_path):
    # A first run into a folder holding an evaluation of another, existing model.
    from jaxcifar.reports import remove_evaluation_of

    (tmp_path / "other.msgpack").write_bytes(b"another model")
    evaluated = {"evaluated": {"checkpoint": str(tmp_path / "other.msgpack")}}
    (tmp_path / "metrics.json").write_text(json.dumps({**report(), **evaluated}))
    remove_evaluation_of(tmp_path / "model.msgpack")
    assert (tmp_path / "metrics.json").exists()


@pytest.mark.parametrize(
    "text",
    [
        "{not json", b"\xff\xfe{}", "[1, 2]", "5", '["config", "epochs", "test_accuracy"]',
        '{"test_accuracy": 0.5}',
    ],
)
def test_a_metrics_json_that_is_not_a_report_of_ours_leaves_the_figures_alone(tmp_path, text):
    # Text that is no JSON (or no UTF-8) and a JSON number crashed the reports; a list of our
    # key names, or any object with a test_accuracy, passed for ours, removing the user's curves.
    (tmp_path / "loss.png").write_text("the user's")
    (tmp_path / "metrics.json").write_bytes(text if isinstance(text, bytes) else text.encode())
    write_reports(tmp_path, {**report(), "epochs": []})
    assert (tmp_path / "loss.png").read_text() == "the user's"


def test_an_evaluation_of_a_checkpoint_since_removed_is_left_in_place(tmp_path):
    # Its checkpoint gone, it is not of the model beside it: os.path.samefile raised
    # FileNotFoundError on the vanished file.
    from jaxcifar.reports import remove_evaluation_of

    model = tmp_path / "model.msgpack"
    model.write_bytes(b"the old model")
    evaluated = {"evaluated": {"checkpoint": str(tmp_path / "gone.msgpack")}}
    (tmp_path / "metrics.json").write_text(json.dumps({**report(), **evaluated}))
    remove_evaluation_of(model)
    assert json.loads((tmp_path / "metrics.json").read_text()) == {**report(), **evaluated}
