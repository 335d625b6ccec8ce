import numpy as np
from PIL import Image

from jaxcifar.cli import main
from test_data_idx import write_idx_set


def test_info_prints_source_shape_and_class_counts(tmp_path, fresh_cache, capsys):
    written = write_idx_set(tmp_path / "fashion-mnist", n_train=6, n_test=4)
    assert main(["data", "info", "--dataset", "fashion_mnist", "--data-dir", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"source       {tmp_path / 'fashion-mnist'}"
    assert lines[1] == "image shape  5x3x1 uint8"
    assert lines[2].split() == ["class", "train", "test"]
    train_counts = np.bincount(written["train"][1], minlength=10)
    test_counts = np.bincount(written["test"][1], minlength=10)
    assert lines[3] == f"{'T-shirt/top':<14}{train_counts[0]:>8}{test_counts[0]:>8}"
    assert lines[12].startswith("Ankle boot") and lines[13].split() == ["total", "6", "4"]


def test_show_writes_a_png_grid(tmp_path, fresh_cache, capsys):
    write_idx_set(tmp_path / "mnist", shape=(28, 28))
    out = tmp_path / "figs" / "grid.png"
    argv = ["data", "show", "--dataset", "mnist", "--data-dir", str(tmp_path), "--count", "5", "--out", str(out)]
    assert main(argv) == 0
    assert capsys.readouterr().out.strip() == f"wrote {out}"
    with Image.open(out) as image:
        assert image.format == "PNG" and image.width > 100 and image.height > 100
    assert sorted(p.name for p in out.parent.iterdir()) == ["grid.png"]


def test_errors_are_one_line_with_exit_2(tmp_path, fresh_cache, capsys):
    assert main(["data", "show", "--data-dir", str(tmp_path), "--out", "grid.jpg"]) == 2
    assert capsys.readouterr().err.strip() == "jaxcifar data: error: --out grid.jpg: expected a file name ending in .png"
    assert main(["data", "info", "--dataset", "mnist", "--data-dir", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith(f"jaxcifar data: error: no mnist data in {tmp_path}: expected")
