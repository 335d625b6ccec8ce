import dataclasses
import os
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxcifar import checkpoint, train
from jaxcifar.config import RunConfig
from jaxcifar.errors import CheckpointError
from data_files import rewrite_msgpack
from synthetic import MLP, tiny_dataset

CONFIG = dataclasses.replace(MLP, epochs=2)


class Interrupted(Exception):
    pass


def fit(config, **kwargs):
    return train.fit(config, tiny_dataset(96), tiny_dataset(12, seed=1), progress=False,
                     log=lambda line: None, **kwargs)  # fmt: skip


def save_and_stop(directory):
    def on_epoch_end(state, history):
        checkpoint.save(directory, state, CONFIG, input_shape=(8, 8, 1),
                        class_names=("a", "b", "c"), history=history)  # fmt: skip
        raise Interrupted

    return on_epoch_end


def test_resume_reproduces_an_uninterrupted_run_bit_for_bit(tmp_path):
    whole = fit(CONFIG)
    with pytest.raises(Interrupted):
        fit(CONFIG, on_epoch_end=save_and_stop(tmp_path))
    saved = checkpoint.load(tmp_path)
    assert saved.config == CONFIG and len(saved.history) == 1
    assert saved.input_shape == (8, 8, 1) and saved.class_names == ("a", "b", "c")
    state = checkpoint.restore(saved, train.state_template(CONFIG, (8, 8, 1), 3))
    resumed = fit(CONFIG, state=state, history=saved.history)
    jax.tree.map(np.testing.assert_array_equal, whole.state, resumed.state)
    assert [r["train_loss"] for r in resumed.history] == [r["train_loss"] for r in whole.history]


@pytest.fixture
def saved_file(tmp_path):
    with pytest.raises(Interrupted):
        fit(dataclasses.replace(CONFIG, epochs=1), on_epoch_end=save_and_stop(tmp_path))
    return tmp_path / checkpoint.FILENAME


def test_the_commands_know_the_checkpoints_file_name():
    # Spelled out there so that the NumPy-only scratch command need not import JAX.
    from jaxcifar.commands.arguments import TRAINING_CHECKPOINT

    assert TRAINING_CHECKPOINT == checkpoint.FILENAME


def test_truncated_checkpoint_is_refused(saved_file):
    saved_file.write_bytes(saved_file.read_bytes()[:200])
    with pytest.raises(CheckpointError, match=f"{saved_file}: not a readable checkpoint"):
        checkpoint.load(saved_file)


def test_foreign_files_are_refused(tmp_path):
    from flax import serialization

    foreign = tmp_path / "foreign.msgpack"
    foreign.write_bytes(serialization.msgpack_serialize({"params": {"w": np.zeros(3)}}))
    with pytest.raises(CheckpointError, match="foreign.msgpack: not a jaxcifar checkpoint"):
        checkpoint.load(foreign)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(CheckpointError, match="notes.txt: not a"):
        checkpoint.load(text)
    with pytest.raises(CheckpointError, match="no checkpoint there"):
        checkpoint.load(tmp_path / "missing")


def test_a_report_given_as_the_checkpoint_is_named_json_not_corrupt(tmp_path):
    # `evaluate --checkpoint RUN/speedrun.json` read "truncated or corrupt: unpack(b)
    # received extra data."
    report = tmp_path / "speedrun.json"
    report.write_text('\n  {"device": "cpu", "runs": []}\n')
    with pytest.raises(CheckpointError) as refused:
        checkpoint.load(report)
    assert str(refused.value) == (
        f"{report}: not a checkpoint but JSON text, as a run's metrics.json or speedrun.json "
        "holds; pass the run's folder"
    )


def test_other_version_and_other_model_are_refused(saved_file):
    rewrite_msgpack(saved_file, lambda payload: payload.update(version=99))
    with pytest.raises(CheckpointError, match="format version 99, this jaxcifar reads 1"):
        checkpoint.load(saved_file)
    rewrite_msgpack(saved_file, lambda payload: payload.update(version=checkpoint.VERSION))
    wider = dataclasses.replace(CONFIG, mlp_hidden=(32,))
    with pytest.raises(CheckpointError, match="state array shapes or dtypes do not fit this model"):
        checkpoint.restore(checkpoint.load(saved_file), train.state_template(wider, (8, 8, 1), 3))
    cnn = RunConfig(dataset="mnist")
    with pytest.raises(CheckpointError, match="does not fit this model"):
        checkpoint.restore(checkpoint.load(saved_file), train.state_template(cnn, (8, 8, 1), 3))


def test_a_checkpoint_dtype_other_than_the_models_is_refused(saved_file):
    def first_layer_to_float16(payload):
        params = payload["state"]["params"]
        name = next(iter(params))
        params[name] = jax.tree.map(lambda leaf: np.asarray(leaf, np.float16), params[name])

    rewrite_msgpack(saved_file, first_layer_to_float16)
    with pytest.raises(CheckpointError, match="state array shapes or dtypes do not fit this model"):
        checkpoint.restore(checkpoint.load(saved_file), train.state_template(CONFIG, (8, 8, 1), 3))


def test_what_is_not_a_regular_file_is_refused_before_it_is_read(tmp_path, ends_within_a_minute):
    # /dev/zero was read until memory ran out (evaluate and predict); a FIFO without a
    # writer would block its reader for ever.
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for path in (Path("/dev/zero"), fifo):
        with pytest.raises(CheckpointError) as refused:
            checkpoint.load(path)
        assert str(refused.value) == f"{path}: cannot read (not a regular file)"


def test_unreadable_checkpoint_is_not_called_corrupt(tmp_path):
    (tmp_path / checkpoint.FILENAME).mkdir()  # a folder where the file should be
    message = f"{tmp_path / checkpoint.FILENAME}: cannot read \\(Is a directory\\)"
    with pytest.raises(CheckpointError, match=message):
        checkpoint.load(tmp_path)
    # Named itself (`train --resume` and `evaluate --checkpoint RUN/checkpoint.msgpack`), it
    # was taken for a run folder: "RUN/checkpoint.msgpack/checkpoint.msgpack: no checkpoint".
    with pytest.raises(CheckpointError, match=message):
        checkpoint.load(tmp_path / checkpoint.FILENAME)


@pytest.mark.parametrize(
    "shape", [[8, 8], [8, 0, 1], [8, 8, -1], [8, 8, 1, 1], [8.0, 8, 1], [8, True, 1], "881"]
)
def test_input_shape_must_be_three_positive_ints(saved_file, shape):
    rewrite_msgpack(saved_file, lambda payload: payload.update(input_shape=shape))
    message = r"malformed checkpoint \(input_shape .*expected three positive integers"
    with pytest.raises(CheckpointError, match=message):
        checkpoint.load(saved_file)


@pytest.mark.parametrize(
    "field, value", [("history", ["ab"]), ("history", [["epoch"]]), ("config", ["model"])]
)
def test_malformed_fields_are_named_not_a_traceback(saved_file, field, value):
    # dict() of a list of strings raises ValueError
    rewrite_msgpack(saved_file, lambda payload: payload.update({field: value}))
    with pytest.raises(CheckpointError, match=f"{saved_file}: malformed checkpoint"):
        checkpoint.load(saved_file)


def test_epoch_records_saved_before_their_test_count_was_kept_still_load(saved_file):
    def drop(name):
        return lambda payload: [record.pop(name) for record in payload["history"]]

    assert checkpoint.load(saved_file).history[0]["test_examples"] == 12
    rewrite_msgpack(saved_file, drop("test_examples"))  # as an older jaxcifar saved them
    (record,) = checkpoint.load(saved_file).history
    assert list(record) == list(train.EpochRecord._fields) and record["test_examples"] is None
    rewrite_msgpack(saved_file, drop("test_loss"))  # every other field is needed
    with pytest.raises(CheckpointError, match=r"malformed checkpoint \(.*without test_loss"):
        checkpoint.load(saved_file)


def test_resume_changes_name_the_fields():
    # Constant schedule: more epochs extend the run, so only the other three are changes.
    other = dataclasses.replace(CONFIG, batch_size=4, model="cnn", lr=0.5, epochs=9)
    assert other.resume_changes(CONFIG) == [
        "model: 'mlp' -> 'cnn'", "batch_size: 16 -> 4", "lr: 0.01 -> 0.5"
    ]


HISTORY = [
    {"epoch": epoch, "train_loss": loss, "train_accuracy": 0.5, "test_loss": loss,
     "test_accuracy": 0.5, "test_examples": 10, "seconds": 1.0}
    for epoch, loss in ((1, 0.75), (2, 0.5))
]  # fmt: skip


@pytest.fixture
def small_file(tmp_path):
    """A checkpoint of a one-array state with a two-epoch history, written by `save`."""
    state = {"w": np.zeros(2, np.float32)}
    return checkpoint.save(tmp_path, state, CONFIG, input_shape=(8, 8, 1), class_names=("a", "b"),
                           history=HISTORY)  # fmt: skip


def test_every_epoch_of_the_history_comes_back(small_file):
    # Else a resumed run's metrics.json would lose its earlier epochs.
    assert checkpoint.load(small_file).history == HISTORY


def test_the_training_sets_record_comes_back_and_older_checkpoints_have_none(
    tmp_path, small_file
):
    # A resume compares it with the data it is given: lost in the file, any data would do.
    record = {"source": "/data/cifar10.tar.gz", "examples": 2, "digest": "ab" * 32}
    path = checkpoint.save(tmp_path / "run", {"w": np.zeros(2, np.float32)}, CONFIG,
                           input_shape=(8, 8, 1), class_names=("a", "b"), history=HISTORY,
                           train_data=record)  # fmt: skip
    assert checkpoint.load(path).train_data == record
    rewrite_msgpack(path, lambda payload: payload.pop("train_data"))  # saved before it
    assert checkpoint.load(path).train_data is None
    assert checkpoint.load(small_file).train_data is None


def test_a_history_record_without_a_field_the_reports_read_is_malformed(small_file):
    # It loaded, then `evaluate --out` or a resume's reports failed with KeyError: 'epoch'.
    rewrite_msgpack(small_file, lambda payload: payload.update(history=[{"x": 1}]))
    with pytest.raises(CheckpointError) as caught:
        checkpoint.load(small_file)
    assert str(caught.value) == (
        f"{small_file}: malformed checkpoint ('history record without epoch, train_loss, "
        "train_accuracy, test_loss, test_accuracy, test_examples, seconds')"
    )


@pytest.mark.parametrize("state", [None, [1, 2]])
def test_a_state_that_is_no_dict_does_not_fit_the_model(small_file, state):
    # flax's from_state_dict raised AttributeError ('NoneType' has no attribute 'keys').
    rewrite_msgpack(small_file, lambda payload: payload.update(state=state))
    template = {"w": np.zeros(2, np.float32)}
    with pytest.raises(CheckpointError, match=f"^{small_file}: state does not fit this model"):
        checkpoint.restore(checkpoint.load(small_file), template)


def test_a_checkpoint_without_a_version_is_refused(small_file):
    rewrite_msgpack(small_file, lambda payload: payload.pop("version"))
    with pytest.raises(CheckpointError, match=f"{small_file}: checkpoint format version None"):
        checkpoint.load(small_file)


def test_a_msgpack_list_is_refused_naming_the_file(tmp_path):
    # Else payload.get raised an AttributeError traceback.
    from flax import serialization

    path = tmp_path / "list.msgpack"
    path.write_bytes(serialization.msgpack_serialize([1, 2]))
    with pytest.raises(CheckpointError, match=f"{path}: not a jaxcifar checkpoint"):
        checkpoint.load(path)


def test_a_bad_config_value_is_a_malformed_checkpoint_naming_the_file(small_file):
    rewrite_msgpack(small_file, lambda payload: payload["config"].update(lr=-1))
    message = f"{small_file}: malformed checkpoint \\(lr must be positive and within float32"
    with pytest.raises(CheckpointError, match=message):
        checkpoint.load(small_file)


def test_a_malformed_training_data_record_is_a_malformed_checkpoint(small_file):
    rewrite_msgpack(small_file, lambda payload: payload.update(train_data={"examples": "64"}))
    message = f"{small_file}: malformed checkpoint \\(train_data {{'examples': '64'}}; expected"
    with pytest.raises(CheckpointError, match=message):
        checkpoint.load(small_file)


@pytest.mark.parametrize("examples", ["64", 64.0, True])
def test_a_training_data_record_whose_size_is_no_int_is_malformed(small_file, examples):
    # They loaded: a resume then took "64" for another training set's size, and 64.0 or True
    # (== 1) for a size.
    record = {"source": "/data/cifar10.tar.gz", "examples": examples, "digest": "ab" * 6,
              "pixels": "cd" * 6}  # fmt: skip
    rewrite_msgpack(small_file, lambda payload: payload.update(train_data=record))
    message = (f"^{small_file}: malformed checkpoint \\(train_data .*; expected its source, "
               "examples and digest\\)$")  # fmt: skip
    with pytest.raises(CheckpointError, match=message):
        checkpoint.load(small_file)


def test_an_epoch_record_missing_more_than_its_test_count_is_malformed(small_file):
    # Only test_examples may be missing (older checkpoints); a record that also lacked its
    # seconds loaded, as long as test_examples came first of the missing fields.
    def drop(*names):
        return lambda payload: [record.pop(name) for record in payload["history"] for name in names]

    rewrite_msgpack(small_file, drop("test_examples"))
    assert [record["test_examples"] for record in checkpoint.load(small_file).history] == [None] * 2
    rewrite_msgpack(small_file, drop("seconds"))
    with pytest.raises(CheckpointError) as caught:
        checkpoint.load(small_file)
    assert str(caught.value) == (
        f"{small_file}: malformed checkpoint ('history record without test_examples, seconds')"
    )


def test_a_version_of_another_type_is_shown_as_it_was_read(small_file):
    # "format version 1, this jaxcifar reads 1" hid that the file held the text "1".
    rewrite_msgpack(small_file, lambda payload: payload.update(version="1"))
    expected = "checkpoint format version '1', this jaxcifar reads 1$"
    with pytest.raises(CheckpointError, match=expected):
        checkpoint.load(small_file)
