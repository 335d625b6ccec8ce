import numpy as np
import pytest
from PIL import Image

from jaxcifar.cli import main
from data_files import write_idx_set, write_tree


def test_info_prints_source_shape_and_class_counts(tmp_path, fresh_cache, capsys):
    written = write_idx_set(tmp_path / "fashion-mnist", n_train=6, n_test=4)
    assert main(["data", "info", "--dataset", "fashion_mnist", "--data-dir", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"source       {tmp_path / 'fashion-mnist'}"
    assert lines[1] == "image shape  (H, W, C) (5, 3, 1) uint8"
    assert lines[2].split() == ["class", "train", "test"]
    train_counts = np.bincount(written["train"][1], minlength=10)
    test_counts = np.bincount(written["test"][1], minlength=10)
    assert lines[3] == f"{'T-shirt/top':<14}{train_counts[0]:>8}{test_counts[0]:>8}"
    assert lines[12].startswith("Ankle boot") and lines[13].split() == ["total", "6", "4"]


def test_info_widens_its_class_column_for_long_class_names(tmp_path, fresh_cache, capsys):
    # A name of 13 characters or more put its row's counts out of line with the others'.
    write_tree(tmp_path / "data", classes=("cat", "a_long_class_name"))
    assert main(["data", "info", "--data-dir", str(tmp_path / "data")]) == 0
    table = capsys.readouterr().out.splitlines()[2:]
    assert table == [
        f"{'class':<19}   train    test",
        f"{'a_long_class_name':<19}       2       2",
        f"{'cat':<19}       2       2",
        f"{'total':<19}       4       4",
    ]


def test_info_lines_up_wide_and_combining_class_names(tmp_path, fresh_cache, capsys):
    # Padded by len(), a Chinese name's row ran two columns past the others per character, and
    # an accented one (x + combining acute: NFC has no one character for it) fell one short.
    write_tree(tmp_path / "data", classes=("猫猫猫猫猫猫猫", "max\u0301", "dog"))
    assert main(["data", "info", "--data-dir", str(tmp_path / "data")]) == 0
    table = capsys.readouterr().out.splitlines()[2:]
    assert table == [
        "class" + " " * 11 + "   train    test",
        "dog" + " " * 13 + "       2       2",
        "max\u0301" + " " * 13 + "       2       2",
        "猫猫猫猫猫猫猫" + " " * 2 + "       2       2",
        "total" + " " * 11 + "       6       6",
    ]


def test_a_warning_is_one_line_naming_the_command(tmp_path, monkeypatch, capsys):
    write_idx_set(tmp_path / "mnist", n_train=6, n_test=4)
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("JAXCIFAR_CACHE", str(tmp_path / "file"))
    assert main(["data", "info", "--dataset", "mnist", "--data-dir", str(tmp_path)]) == 0
    err = capsys.readouterr().err
    assert err.startswith(f"jaxcifar data info: warning: could not write the dataset cache "
                          f"{tmp_path / 'file'}/mnist-")  # fmt: skip
    assert err.endswith(f" ({tmp_path / 'file'} is a file, not a folder; $JAXCIFAR_CACHE names "
                        "its folder): the data is decoded again on every load\n")  # fmt: skip
    assert err.count("\n") == 1


def test_show_writes_a_png_grid(tmp_path, fresh_cache, capsys):
    write_idx_set(tmp_path / "mnist", shape=(28, 28))
    out = tmp_path / "figs" / "grid.png"
    argv = ["data", "show", "--dataset", "mnist", "--data-dir", str(tmp_path), "--count", "5",
            "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    assert capsys.readouterr().out.strip() == f"wrote {out}: 5 of 6 training images"
    with Image.open(out) as image:
        assert image.format == "PNG" and image.width > 100 and image.height > 100
    assert sorted(p.name for p in out.parent.iterdir()) == ["grid.png"]


def test_errors_are_one_line_with_exit_2(tmp_path, fresh_cache, capsys):
    assert main(["data", "show", "--data-dir", str(tmp_path), "--out", "grid.jpg"]) == 2
    assert capsys.readouterr().err.strip() == (
        "jaxcifar data show: error: --out grid.jpg: expected a file name ending in .png"
    )
    # A folder was told only that its name lacked .png.
    assert main(["data", "show", "--data-dir", str(tmp_path), "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"jaxcifar data show: error: --out {tmp_path} is a folder; expected a .png file name, "
        f"such as {tmp_path / 'grid.png'}"
    )
    assert main(["data", "info", "--dataset", "mnist", "--data-dir", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith(
        f"jaxcifar data info: error: no mnist data in {tmp_path}: expected"
    )


def test_show_draws_at_most_400_images_and_says_when_the_split_has_fewer(
    tmp_path, fresh_cache, capsys
):
    # Before: --count 100000 ran for 10 minutes and grew to 18 GB drawing its figure.
    argv = ["data", "show", "--dataset", "mnist", "--data-dir", str(tmp_path)]
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--count", "401", "--out", str(tmp_path / "g.png")])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.startswith(
        "jaxcifar data show: error: argument --count: expected an integer in 1..400, got 401"
    )
    write_idx_set(tmp_path / "mnist", n_train=6, n_test=2)
    assert main([*argv, "--count", "400", "--out", str(tmp_path / "g.png")]) == 0
    assert capsys.readouterr().out == f"wrote {tmp_path / 'g.png'}: 6 of 6 training images\n"


def test_show_checks_its_out_folder_before_reading_the_data(tmp_path, capsys):
    (tmp_path / "afile").write_text("")
    out = tmp_path / "afile" / "g.png"
    # No data at all: --out is refused first (before: "File exists: afile", after the data).
    assert main(["data", "show", "--data-dir", str(tmp_path / "nowhere"), "--out", str(out)]) == 2
    assert capsys.readouterr().err == (
        f"jaxcifar data show: error: --out {out}: {tmp_path / 'afile'} is a file, not a folder\n"
    )


def test_show_titles_each_image_with_its_own_class_and_seed_picks_the_sample(
    tmp_path, fresh_cache, monkeypatch, capsys
):
    import jaxcifar.plots
    from jaxcifar.data.dataset import CLASS_NAMES

    images, labels = write_idx_set(tmp_path / "mnist", n_train=6)["train"]
    drawn = []
    monkeypatch.setattr(jaxcifar.plots, "plot_image_grid",
                        lambda path, images, titles: drawn.append((images, titles)))  # fmt: skip
    argv = ["data", "show", "--dataset", "mnist", "--data-dir", str(tmp_path), "--count", "3"]
    for seed in ("1", "2", "1"):
        # An upper-case .PNG is a PNG too.
        assert main([*argv, "--seed", seed, "--out", str(tmp_path / "G.PNG")]) == 0
    samples = []
    for shown, titles in drawn:
        rows = [next(i for i in range(6) if np.array_equal(images[i], image[..., 0]))
                for image in shown]
        assert titles == [CLASS_NAMES["mnist"][labels[i]] for i in rows]
        samples.append(rows)
    assert samples[0] == samples[2] != samples[1]
