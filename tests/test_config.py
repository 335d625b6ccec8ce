"""RunConfig: validation of single values and combinations, and what a resume must keep."""

import dataclasses

import jax
import pytest

from jaxcifar.config import RunConfig
from jaxcifar.errors import ConfigError
from jaxcifar.optim import build_optimizer


@pytest.mark.parametrize("seed", [-1, 2**31, 1.5])
def test_seed_outside_int32_is_refused(seed):
    # Seeds travel as np.int32 into jitted code: 2**31 once ended in an OverflowError there.
    with pytest.raises(ConfigError, match=rf"seed must be an integer in 0..2147483647; got {seed}"):
        RunConfig(seed=seed)


def test_largest_int32_seed_is_accepted():
    assert RunConfig(seed=2**31 - 1).seed == 2**31 - 1


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("momentum", 1.0, r"momentum must be in \[0, 1\), also once rounded to float32; got 1.0"),
        ("momentum", -0.1, r"momentum must be in \[0, 1\), also once rounded to float32; got -0.1"),
        # float32, the optimizer's type, rounds it to 1: the velocity would never decay.
        ("momentum", 0.99999999999,
         r"momentum must be in \[0, 1\), also once rounded to float32; got 0.99999999999"),
        ("weight_decay", -1.0,
         r"weight_decay must be >= 0 and at most float32's 3.4e\+38; got -1.0"),
        ("weight_decay", 1e39,
         r"weight_decay must be >= 0 and at most float32's 3.4e\+38; got 1e\+39"),
        # 0 in float32: the run never moved. 3.5e38: infinite there, NaN at the first step.
        ("lr", 1e-50, r"lr must be positive and within float32's normal range, 1.18e-38 to "
                      r"3.4e\+38; got 1e-50"),
        ("lr", 3.5e38, r"lr must be positive and within float32's normal range, 1.18e-38 to "
                       r"3.4e\+38; got 3.5e\+38"),
    ],
)  # fmt: skip
def test_lr_momentum_and_weight_decay_out_of_range_are_named_one_at_a_time(field, value, message):
    with pytest.raises(ConfigError, match=f"^{message}$"):
        RunConfig(**{field: value})


def test_nesterov_without_momentum_is_refused():
    # With momentum 0 optax's nesterov is plain SGD: the flag would do nothing, silently.
    with pytest.raises(ConfigError, match="optimizer nesterov needs momentum > 0"):
        RunConfig(optimizer="nesterov", momentum=0.0)
    RunConfig(optimizer="sgd", momentum=0.0)


@pytest.mark.parametrize(
    "change, mismatch",
    [
        ({"momentum": 0.0}, "momentum: 0.9 -> 0.0"),
        ({"weight_decay": 5e-4}, "weight_decay: 0.0 -> 0.0005"),
    ],
)
def test_resume_refuses_what_changes_the_optimizer_state(change, mismatch):
    saved = RunConfig()
    now = dataclasses.replace(saved, **change)
    assert now.resume_changes(saved) == [mismatch]
    # Why: the optimizer state the checkpoint holds would not fit the resumed run's.
    states = [build_optimizer(config, 1).init({"w": 0.0}) for config in (saved, now)]
    assert jax.tree.structure(states[0]) != jax.tree.structure(states[1])


@pytest.mark.parametrize("schedule", ["cosine", "onecycle"])
def test_resume_refuses_more_epochs_under_a_schedule_the_run_length_sets(schedule):
    saved = RunConfig(schedule=schedule, epochs=10)
    assert dataclasses.replace(saved, epochs=20).resume_changes(saved) == [
        f"epochs: 10 -> 20 (sets the length of the {schedule} schedule; only a constant "
        "schedule can be extended)"
    ]


def test_resume_lets_a_constant_rate_run_grow():
    saved = RunConfig(epochs=10)
    assert dataclasses.replace(saved, epochs=20).resume_changes(saved) == []


def test_resume_judges_an_epochs_change_by_the_schedule_it_resumes_with():
    # The resumed run's schedule sets whether its length may change, not the saved one's:
    # judged by the saved one, a constant run resumed as cosine changed its length unlisted.
    assert RunConfig(schedule="cosine", epochs=20).resume_changes(RunConfig(epochs=10)) == [
        "epochs: 10 -> 20 (sets the length of the cosine schedule; only a constant schedule "
        "can be extended)",
        "schedule: 'constant' -> 'cosine'",
    ]
    assert RunConfig(epochs=20).resume_changes(RunConfig(schedule="cosine", epochs=10)) == [
        "schedule: 'cosine' -> 'constant'"
    ]


def test_resume_refuses_any_change_that_trains_another_run():
    # lr, augmentation, dtype and schedule leave the state's structure alone, but resuming
    # with them changed would train the remaining epochs as another run than the saved one.
    saved = RunConfig(lr=0.02, augment=True, dtype="bfloat16")
    now = dataclasses.replace(saved, lr=0.001, augment=False, dtype="float32", schedule="cosine")
    assert now.resume_changes(saved) == [
        "lr: 0.02 -> 0.001", "schedule: 'constant' -> 'cosine'", "augment: True -> False",
        "dtype: 'bfloat16' -> 'float32'",
    ]  # fmt: skip


def test_resume_of_an_adam_run_ignores_the_momentum_it_ignores():
    # Listed as a change, refused without --override-config, though Adam never reads it.
    saved = RunConfig(optimizer="adam", momentum=0.5)
    assert RunConfig(optimizer="adam").resume_changes(saved) == []
    assert RunConfig(optimizer="adamw").resume_changes(saved) == ["optimizer: 'adam' -> 'adamw'"]
    assert RunConfig(optimizer="sgd").resume_changes(saved) == [
        "optimizer: 'adam' -> 'sgd'", "momentum: 0.5 -> 0.9"
    ]
    assert RunConfig(optimizer="adam").resume_changes(RunConfig(momentum=0.5)) == [
        "optimizer: 'sgd' -> 'adam'", "momentum: 0.5 -> 0.9"
    ]


def test_resume_may_evaluate_on_another_test_subset():
    saved = RunConfig(limit_test=100)
    assert dataclasses.replace(saved, limit_test=None).resume_changes(saved) == []
    assert dataclasses.replace(saved, limit_train=100).resume_changes(saved) == [
        "limit_train: None -> 100"
    ]


@pytest.mark.parametrize(
    "field, value",
    [
        ("epochs", 0), ("batch_size", 0), ("limit_train", 0), ("limit_test", 0),
        ("epochs", 2.5), ("limit_train", 10.0),  # a float would reach range() and slices
        ("lr", 0.0), ("lr", float("nan")), ("weight_decay", float("nan")),
        ("mlp_hidden", (8.0,)), ("mlp_hidden", (0,)), ("mlp_hidden", (16, 0)),
        ("dtype", "float16"), ("schedule", "linear"),
    ],
)
def test_each_value_a_run_cannot_take_is_refused_naming_its_field(field, value):
    # Through the library and hand-edited checkpoints, no flag type checks these first.
    with pytest.raises(ConfigError, match=f"^{field} must "):
        RunConfig(**{field: value})


def test_an_unknown_configuration_key_is_named():
    # Else a TypeError from the constructor, a traceback, for a hand-edited checkpoint.
    with pytest.raises(ConfigError, match="^unknown configuration keys: learning_rate$"):
        RunConfig.from_dict({**RunConfig().to_dict(), "learning_rate": 0.1})
