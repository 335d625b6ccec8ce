"""A speedrun's saved model (`jaxcifar.speedrun.model_file`) as `evaluate` and `predict` find,
check and run it; the speedrun itself is tested in test_speedrun.py."""

import numpy as np
import pytest
from flax import serialization
from PIL import Image

from jaxcifar import checkpoint, cli, compiling
from jaxcifar.speedrun import model_file
from jaxcifar.speedrun.train import XLA_OPTIONS
from data_files import write_tree


def test_only_a_file_of_the_speedrun_format_is_taken_for_a_speedrun_model(
    tmp_path, save_speedrun_model
):
    # A training checkpoint named by its path is for `evaluate` to read as one.
    trained = tmp_path / "run" / "last.msgpack"
    trained.parent.mkdir()
    trained.write_bytes(serialization.msgpack_serialize(
        {"format": checkpoint.FORMAT, "version": checkpoint.VERSION}
    ))  # fmt: skip
    assert model_file.find(trained) is None
    # Copied under the speedrun model's name it is still a training checkpoint: it was
    # refused as "not a jaxcifar speedrun model".
    renamed = tmp_path / model_file.FILENAME
    renamed.write_bytes(trained.read_bytes())
    assert model_file.find(renamed) is None
    copy = tmp_path / "copy.msgpack"
    copy.write_bytes(save_speedrun_model(tmp_path / "saved").read_bytes())
    assert model_file.find(copy) == copy


def test_an_unreadable_model_file_named_by_its_path_is_called_a_speedrun_model(tmp_path, capsys):
    path = tmp_path / model_file.FILENAME
    path.write_bytes(b"\x00truncated")
    assert cli.main(["evaluate", "--checkpoint", str(path)]) == 2
    assert capsys.readouterr().err.startswith(
        f"jaxcifar evaluate: error: {path}: not a readable speedrun model"
    )


def test_predictions_are_one_per_image_when_the_last_batch_is_padded(
    tmp_path, monkeypatch, save_speedrun_model
):
    import jax

    # A fresh model's whitening layer and head are zero: every image was class 0, and this
    # test could not fail. A random whitening layer, and a random head less its mean over
    # features (the ReLU features share a large positive part, which would pick one class for
    # every image), with pixels standardised about 0, give the images different classes.
    fresh = model_file.load(save_speedrun_model(tmp_path / "fresh"))
    whiten, head = (jax.random.normal(jax.random.key(key), fresh.params[layer]["kernel"].shape)
                    for key, layer in enumerate(("whiten", "head")))  # fmt: skip
    params = {**fresh.params, "whiten": {**fresh.params["whiten"], "kernel": whiten},
              "head": {"kernel": head - head.mean(0)}}  # fmt: skip
    centred = dict(mean=np.full(3, 0.5, np.float32), std=np.full(3, 0.25, np.float32))
    model = model_file.load(save_speedrun_model(tmp_path, params=params, **centred))
    coarse = np.random.default_rng(0).integers(0, 256, (7, 8, 8, 3), dtype=np.uint8)
    images = coarse.repeat(4, axis=1).repeat(4, axis=2)  # smooth, as photos are
    alone = np.concatenate([model_file.predictions(model, image[None]) for image in images])
    assert len(set(alone.tolist())) > 2
    monkeypatch.setattr(model_file, "EVAL_BATCH", 3)  # three batches, the last one padded
    np.testing.assert_array_equal(model_file.predictions(model, images), alone)


def test_a_model_whose_logits_are_not_finite_is_refused_not_scored_as_class_0(
    tmp_path, save_speedrun_model
):
    # NaN logits' argmax is 0: a diverged model scored as one predicting "airplane".
    import jax
    import jax.numpy as jnp
    import pytest

    from jaxcifar.errors import CheckpointError

    fresh = model_file.load(save_speedrun_model(tmp_path / "fresh"))
    nan_params = jax.tree.map(lambda leaf: jnp.full_like(leaf, jnp.nan), fresh.params)
    model = model_file.load(save_speedrun_model(tmp_path / "nan", params=nan_params))
    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    assert (model_file.predictions(fresh, images) >= 0).all()
    with pytest.raises(CheckpointError, match=r"nan/model.msgpack: its weights give non-finite "
                       r"logits for 3 of 3 images$"):  # fmt: skip
        model_file.predictions(model, images)


def test_evaluate_refuses_data_of_another_image_size_than_the_speedrun_models(
    tmp_path, fresh_cache, capsys, save_speedrun_model
):
    path = save_speedrun_model(tmp_path / "run")
    write_tree(tmp_path / "data")  # 4x3 images
    argv = ["evaluate", "--checkpoint", str(path), "--data-dir", str(tmp_path / "data")]
    assert cli.main(argv) == 2
    assert capsys.readouterr().err == (
        f"jaxcifar evaluate: error: the test set in {tmp_path / 'data'} (--data-dir) has image "
        f"shape (H, W, C) (3, 4, 3), but {path} was trained on (32, 32, 3); pass the --data-dir "
        "of the data it was trained on\n"
    )


def test_predict_compiles_a_speedrun_model_as_its_training_run_did(
    tmp_path, monkeypatch, capsys, save_speedrun_model
):
    # Its bfloat16 rounding differs under XLA's default options.
    path = save_speedrun_model(tmp_path)
    options, compile_program = [], compiling.compile_program

    def recorded(lowered, given):
        options.append(given)
        return compile_program(lowered, given)

    monkeypatch.setattr(compiling, "compile_program", recorded)
    image = tmp_path / "image.png"
    Image.new("RGB", (32, 32), (200, 30, 30)).save(image)
    assert cli.main(["predict", "--checkpoint", str(path), str(image)]) == 0
    assert capsys.readouterr().out.startswith(f"{image}: ")
    assert options == [XLA_OPTIONS]


def test_predictions_refuse_a_model_with_one_images_logits_non_finite(
    tmp_path, save_speedrun_model, monkeypatch
):
    import pytest

    from jaxcifar.errors import CheckpointError

    model = model_file.load(save_speedrun_model(tmp_path / "m"))
    # Classes 2, -1 (non-finite), 0, and a padded image's -1 that is not counted.
    monkeypatch.setattr(compiling, "compiled_per_shape",
                        lambda *a, **k: lambda *args: np.array([[2, -1, 0, -1]], np.int32))
    images = np.zeros((3, 32, 32, 3), np.uint8)
    with pytest.raises(CheckpointError, match=r"non-finite logits for 1 of 3 images$"):
        model_file.predictions(model, images)


def test_the_model_refuses_images_it_would_score_as_other_images(tmp_path, save_speedrun_model):
    # Each was scored without a word (floats as nearly black pixels, 28x28x1 images as 32x32x3)
    # or failed deep in the network.
    model = model_file.load(save_speedrun_model(tmp_path))
    images = np.zeros((2, 32, 32, 3), np.uint8)
    assert model_file.logits(model, images).shape == (2, 10)
    cases = [
        (TypeError, images.astype(np.float32), "images are float32; expected uint8 pixels, "
         "0..255, which the model standardises itself: pass them as loaded, not through to_float"),
        (TypeError, images.astype(np.uint16), r"images are uint16; .*: convert them \(16-bit ones: "
         r"// 257\)"),
        (ValueError, np.zeros((2, 28, 28, 1), np.uint8), r"images \(2, 28, 28, 1\); expected "
         r"\(N, 32, 32, 3\), the images .* was trained on"),
        (ValueError, images[0], r"images \(32, 32, 3\) \(one image: add the batch axis"),
        (ValueError, images.transpose(0, 3, 1, 2), "NCHW"),
    ]  # fmt: skip
    for error, bad, message in cases:
        for run, name in ((model_file.logits, "logits"), (model_file.predictions, "predictions")):
            with pytest.raises(error, match=f"model_file.{name}: .*{message}"):
                run(model, bad)
