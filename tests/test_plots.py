import warnings

import numpy as np
import pytest
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure

from jaxcifar import plots
from jaxcifar.plots import plot_confusion_matrix, plot_curves

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def figures(monkeypatch) -> list:
    """Each figure as it is saved, to read what it shows."""
    saved = []
    savefig = Figure.savefig

    def capture(figure, *args, **kwargs):
        saved.append(figure)
        return savefig(figure, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", capture)
    return saved


def test_curves_and_confusion_matrix_write_png(tmp_path, figures):
    plot_curves(
        tmp_path / "acc.png", [1, 2, 3], {"train": [0.1, 0.5, 0.7], "test": [0.1, 0.4, 0.6]},
        ylabel="accuracy", title="Accuracy",
    )  # fmt: skip
    # Not symmetric, so a transposed matrix shows; rows are the true classes.
    matrix = np.array([[5, 1, 0], [2, 3, 4], [0, 0, 6]])
    plot_confusion_matrix(tmp_path / "cm.png", matrix, ["a", "b", "c"])
    for name in ("acc.png", "cm.png"):
        assert (tmp_path / name).read_bytes()[:8] == PNG_MAGIC
    assert sorted(p.name for p in tmp_path.iterdir()) == ["acc.png", "cm.png"]
    assert len(figures) == 2

    curves = figures[0].axes[0]
    lines = [(line.get_label(), list(line.get_xdata()), list(line.get_ydata()))
             for line in curves.get_lines()]  # fmt: skip
    assert lines == [("train", [1, 2, 3], [0.1, 0.5, 0.7]), ("test", [1, 2, 3], [0.1, 0.4, 0.6])]
    assert (curves.get_xlabel(), curves.get_ylabel(), curves.get_title()) == (
        "epoch", "accuracy", "Accuracy"
    )  # fmt: skip
    assert [text.get_text() for text in curves.get_legend().get_texts()] == ["train", "test"]

    heatmap = figures[1].axes[0]  # axes[1] is its colorbar
    np.testing.assert_array_equal(heatmap.images[0].get_array(), matrix)
    assert (heatmap.get_xlabel(), heatmap.get_ylabel(), heatmap.get_title()) == (
        "predicted", "true", "Confusion matrix"
    )  # fmt: skip
    assert [label.get_text() for label in heatmap.get_xticklabels()] == ["a", "b", "c"]
    assert [label.get_text() for label in heatmap.get_yticklabels()] == ["a", "b", "c"]
    # Each count written in its cell, (x, y) = (predicted, true); white on the darker half.
    cells = {text.get_position(): (text.get_text(), text.get_color()) for text in heatmap.texts}
    assert len(heatmap.texts) == matrix.size
    for (row, col), count in np.ndenumerate(matrix):
        label, color = cells[col, row]
        assert label == str(count)
        assert to_rgba(color) == to_rgba("white" if count > 3 else "black")


def test_a_confusion_matrix_of_many_classes_stops_growing_and_writes_no_counts(
    tmp_path, figures
):
    # 0.75 inch a class and a count in every cell: 200 classes took 7 GB and a minute, and
    # 600 (an image-folder tree) killed train and evaluate for memory, reports unwritten.
    for k in (plots.LABELLED_CLASSES, plots.LABELLED_CLASSES + 1, 600):
        matrix = np.arange(k * k).reshape(k, k) % 7
        plot_confusion_matrix(tmp_path / f"cm{k}.png", matrix, [f"class {i}" for i in range(k)])
    sizes = [tuple(figure.get_size_inches()) for figure in figures]
    assert sizes == [(1 + plots.MAX_SIDE_INCHES, plots.MAX_SIDE_INCHES)] * 3
    labelled, unlabelled, many = (figure.axes[0] for figure in figures)
    assert len(labelled.texts) == plots.LABELLED_CLASSES**2
    assert len(labelled.get_xticklabels()) == plots.LABELLED_CLASSES
    for heatmap in (unlabelled, many):
        assert not heatmap.texts
        # Ticks at matplotlib's own round indices, no class names.
        assert not any("class" in label.get_text() for label in heatmap.get_xticklabels())
    np.testing.assert_array_equal(many.images[0].get_array(), matrix)  # the 600 classes' own


@pytest.mark.parametrize("epochs", [[1, 2], [1], [4]])
def test_curves_of_a_short_run_tick_whole_epochs_only(tmp_path, monkeypatch, epochs):
    # A one-epoch run's axis read 0.945, 0.960, ... 1.065: too few whole numbers fit for the
    # locator's default two ticks, so it fell back to fractions.
    figures = []
    monkeypatch.setattr(Figure, "savefig", lambda figure, *args, **kwargs: figures.append(figure))
    plot_curves(tmp_path / "loss.png", epochs, {"train": [2.3, 2.1][:len(epochs)]}, ylabel="loss",
                title="Loss")  # fmt: skip
    ax = figures[0].axes[0]
    low, high = ax.get_xlim()
    shown = [tick for tick in ax.get_xticks() if low <= tick <= high]
    assert shown == list(range(epochs[0], epochs[-1] + 1))  # not 1.0, 1.2, ...


@pytest.mark.parametrize("channels", [1, 3])
def test_image_grid_titles_each_image_with_its_own_name_and_shows_grey_as_grey(
    tmp_path, monkeypatch, channels
):
    figures = []
    monkeypatch.setattr(plots, "save_figure", lambda figure, *_, **__: figures.append(figure))
    images = np.stack([np.full((4, 4, channels), value, np.uint8) for value in (0, 100, 200)])
    plots.plot_image_grid(tmp_path / "grid.png", images, ["first", "second", "third"])
    shown = [ax for ax in figures[0].axes if ax.images]
    assert [ax.get_title() for ax in shown] == ["first", "second", "third"]
    for ax, image in zip(shown, images, strict=True):
        np.testing.assert_array_equal(ax.images[0].get_array(), image.squeeze(-1) if channels == 1
                                      else image)  # fmt: skip
        if channels == 1:  # the full 0..255 range in grey, not viridis scaled to each image
            assert ax.images[0].get_cmap().name == "gray"
            assert ax.images[0].get_clim() == (0, 255)


def test_an_image_grid_is_as_wide_as_it_is_tall_or_one_column_wider(tmp_path, monkeypatch):
    # Five images: 3 columns by 2 rows, the last cell empty; floor(sqrt(5)) = 2 columns drew
    # 3 rows, taller than wide.
    figures = []
    monkeypatch.setattr(plots, "save_figure", lambda figure, *_, **__: figures.append(figure))
    plots.plot_image_grid(tmp_path / "grid.png", np.zeros((5, 4, 4, 3), np.uint8), list("abcde"))
    axes = figures[0].axes
    assert axes[0].get_gridspec().get_geometry() == (2, 3)  # rows, columns
    assert [bool(ax.images) for ax in axes] == [True] * 5 + [False]
    assert tuple(figures[0].get_size_inches()) == pytest.approx((3 * 1.3, 2 * 1.45))


def test_image_grid_cuts_long_titles_so_that_they_do_not_run_into_each_other(
    tmp_path, monkeypatch
):
    # `data show` of a class named a_rather_long_class_name_one: neighbouring titles overlapped.
    figures = []
    monkeypatch.setattr(plots, "save_figure", lambda figure, *_, **__: figures.append(figure))
    images = np.zeros((2, 4, 4, 3), np.uint8)
    names = ["a_rather_long_class_name_one", "sixteen_letters_"]
    plots.plot_image_grid(tmp_path / "grid.png", images, names)
    titles = [ax.get_title() for ax in figures[0].axes if ax.images]
    assert titles == ["a_rather_long_c\u2026", "sixteen_letters_"]


def test_characters_the_font_lacks_are_warned_of_once_naming_the_figure(tmp_path):
    # Matplotlib warned "Glyph 26412 (...) missing from font(s) DejaVu Sans." for each
    # character, twice a figure, naming neither the figure nor the class.
    images = np.zeros((2, 4, 4, 3), np.uint8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plots.plot_image_grid(tmp_path / "grid.png", images, ["\u65e5\u672c", "cat"])
    assert [str(w.message) for w in caught] == [
        f"{tmp_path / 'grid.png'}: characters missing from its font are drawn as empty boxes: "
        "\u65e5\u672c"
    ]
    assert (tmp_path / "grid.png").read_bytes().startswith(b"\x89PNG")


def test_other_warnings_of_drawing_a_figure_come_through_as_they_were(tmp_path, monkeypatch):
    def warn_and_save(figure, *args, **kwargs):
        warnings.warn("a warning of matplotlib's own", RuntimeWarning)

    monkeypatch.setattr(Figure, "savefig", warn_and_save)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plots.save_figure(Figure(), tmp_path / "figure.png")
    assert [(w.category, str(w.message)) for w in caught] == [
        (RuntimeWarning, "a warning of matplotlib's own")
    ]
