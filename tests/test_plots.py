import numpy as np

from jaxcifar.plots import plot_confusion_matrix, plot_curves

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_curves_and_confusion_matrix_write_png(tmp_path):
    plot_curves(
        tmp_path / "acc.png", [1, 2, 3], {"train": [0.1, 0.5, 0.7], "test": [0.1, 0.4, 0.6]},
        ylabel="accuracy", title="Accuracy",
    )  # fmt: skip
    plot_confusion_matrix(tmp_path / "cm.png", np.eye(3, dtype=int) * 5, ["a", "b", "c"])
    for name in ("acc.png", "cm.png"):
        assert (tmp_path / name).read_bytes()[:8] == PNG_MAGIC
    assert sorted(p.name for p in tmp_path.iterdir()) == ["acc.png", "cm.png"]
