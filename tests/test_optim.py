import numpy as np
import pytest
import optax

from jaxcifar.config import INT32_MAX, RunConfig
from jaxcifar.errors import ConfigError
from jaxcifar.optim import build_optimizer, build_schedule
from jaxcifar.speedrun import optimizer
from jaxcifar.speedrun.recipe import Recipe


def test_onecycle_is_torchs_one_cycle_cosine_from_lr_over_25_to_lr_over_250000():
    # torch.optim.lr_scheduler.OneCycleLR's defaults: start at lr / 25, cosine up to lr at 30%
    # of the steps, cosine down to lr / 25 / 1e4 at the end (a lighter anneal ends higher).
    lr, total = 0.1, 100
    schedule = build_schedule(RunConfig(lr=lr, epochs=2, schedule="onecycle"), total // 2)
    start, end, peak = lr / 25, lr / 25 / 1e4, 30
    steps = np.arange(total + 1)
    up = start + (lr - start) * (1 - np.cos(np.pi * steps / peak)) / 2
    down = end + (lr - end) * (1 + np.cos(np.pi * (steps - peak) / (total - peak))) / 2
    expected = np.where(steps <= peak, up, down)
    got = np.array([float(schedule(step)) for step in steps])
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-8)


def test_adam_keeps_torchs_betas_whatever_the_momentum():
    # --momentum is SGD's: Adam's first-moment decay stays 0.9 (torch.optim.Adam's default).
    lr, w = 0.1, np.array([1.0, -2.0, 0.5])
    tx = build_optimizer(RunConfig(optimizer="adam", lr=lr, momentum=0.5), 10)
    params = {"w": w.astype(np.float32)}
    state = tx.init(params)
    m = s = np.zeros(3)
    for t, g in enumerate(([0.5, 1.0, -0.25], [-1.0, 0.25, 2.0], [0.3] * 3), start=1):
        updates, state = tx.update({"w": np.float32(g)}, state, params)
        params = optax.apply_updates(params, updates)
        m, s = 0.9 * m + 0.1 * np.array(g), 0.999 * s + 0.001 * np.square(g)
        w = w - lr * (m / (1 - 0.9**t)) / (np.sqrt(s / (1 - 0.999**t)) + 1e-8)
    np.testing.assert_allclose(params["w"], w, rtol=1e-5)


@pytest.mark.parametrize("schedule", ["constant", "cosine", "onecycle"])
def test_a_run_of_more_steps_than_an_int32_counts_is_refused(schedule):
    # optax counts steps in int32; the one-cycle schedule failed with an OverflowError.
    config = RunConfig(epochs=2**28, schedule=schedule)
    build_schedule(config, 7)  # 1,879,048,192 steps: fits
    with pytest.raises(ConfigError) as caught:
        build_schedule(config, 8)
    assert str(caught.value) == (
        "epochs 268435456 x 8 steps an epoch = 2,147,483,648 steps, more than the optimizer's "
        "int32 step count holds (2,147,483,647)"
    )


@pytest.mark.parametrize("schedule", ["constant", "cosine", "onecycle"])
def test_a_run_of_exactly_int32_max_steps_is_built(schedule):
    # The largest step count optax's int32 counter holds is a run, not one step too many.
    built = build_schedule(RunConfig(epochs=INT32_MAX, schedule=schedule), 1)
    assert np.isfinite(float(built(0)))


def test_the_speedrun_multiplier_of_a_one_step_run_is_finite_at_every_step():
    # The peak is step 1, the run's end: a zero-length falling segment divided 0 by 0 (NaN).
    multiplier = optimizer.lr_multiplier(Recipe(), 1)
    values = [float(multiplier(step)) for step in range(-1, 4)]
    assert np.isfinite(values).all()
    np.testing.assert_allclose(values, [0.2, 0.2, 1.0, 0.07, 0.07], rtol=1e-6)
