import dataclasses
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxcifar import epochs, metrics, train
from jaxcifar.config import OPTIMIZERS, RECIPES, RunConfig
from jaxcifar.data import load
from jaxcifar.data.dataset import Dataset
from jaxcifar.data.preprocess import to_float
from jaxcifar.errors import ConfigError, DataError, TrainingDiverged
from jaxcifar.optim import build_optimizer, build_schedule
from synthetic import CLASSES, MLP, tiny_dataset

CNN = RunConfig(dataset="mnist", batch_size=8, epochs=2, lr=0.01)


def quiet_fit(config, train_set, test_set, **kwargs):
    return train.fit(config, train_set, test_set, progress=False, log=lambda line: None, **kwargs)


def test_auto_epoch_mode_scans_where_the_data_fits_the_device(monkeypatch):
    data = tiny_dataset(64)  # 4,096 bytes of images

    def on(platform, stats):
        device = types.SimpleNamespace(platform=platform, memory_stats=lambda: stats)
        monkeypatch.setattr(jax, "local_devices", lambda: [device])
        return epochs.pick_epoch_mode("auto", data)

    assert on("cpu", None) == "chunk"  # scans of 100 steps
    assert epochs.pick_epoch_mode("loop", data) == "loop"
    assert on("gpu", {"bytes_limit": 4 * 4096}) == "scan"  # a quarter of memory holds it
    assert on("gpu", {"bytes_limit": 4 * 4096 - 4}) == "loop"  # streamed from host memory
    assert on("tpu", None) == "scan"  # a backend that reports no memory statistics


def test_training_reduces_loss_and_learns():
    result = quiet_fit(MLP, tiny_dataset(256), tiny_dataset(60, seed=1))
    losses = [record["train_loss"] for record in result.history]
    assert [record["epoch"] for record in result.history] == [1, 2, 3]
    assert losses[-1] < 0.5 * losses[0]
    assert result.test.accuracy > 0.9
    assert result.test.predictions.shape == (60,) and result.test.predictions.dtype == np.int32
    assert result.compile_seconds > 0


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_each_optimizer_builds_and_steps(optimizer):
    config = dataclasses.replace(MLP, optimizer=optimizer, weight_decay=1e-3, schedule="cosine")
    data = tiny_dataset(32)
    setup = train.build_setup(config, data)
    state = train.init_state(config, setup)
    step = train.make_train_step(setup)
    new_state, out = step(state, (data.images[:16], data.labels[:16]), jax.random.key(0))
    assert int(new_state.step) == 1 and np.isfinite(float(out["loss"]))
    changed = jax.tree.map(lambda a, b: bool(np.any(a != b)), state.params, new_state.params)
    assert all(jax.tree.leaves(changed))


def test_schedules():
    def rates(schedule):
        fn = build_schedule(dataclasses.replace(MLP, lr=0.1, epochs=2, schedule=schedule), 50)
        return np.array([float(fn(step)) for step in (0, 30, 50, 100)])

    np.testing.assert_allclose(rates("constant"), [0.1] * 4)
    np.testing.assert_allclose(
        rates("cosine"), [0.1, 0.1 * (1 + np.cos(np.pi * 0.3)) / 2, 0.05, 0.0], atol=1e-7
    )
    onecycle = rates("onecycle")  # warm up to the peak at 30% of 100 steps, then anneal
    assert onecycle[0] < 0.01 and onecycle[1] == pytest.approx(0.1) and onecycle[3] < 1e-4


def _torch_rule(optimizer, lr, mu, wd, w, grads):
    """`w` after one step per gradient in `grads`, as torch.optim's SGD (coupled weight decay,
    no dampening), Adam (coupled) and AdamW (decoupled) write their updates; NumPy float64."""
    v = m = s = np.zeros_like(w)
    for t, g in enumerate(grads, start=1):
        if optimizer != "adamw":
            g = g + wd * w
        if optimizer in ("sgd", "nesterov"):
            v = mu * v + g
            w = w - lr * (g + mu * v if optimizer == "nesterov" else v)
            continue
        m, s = 0.9 * m + 0.1 * g, 0.999 * s + 0.001 * g * g
        step = (m / (1 - 0.9**t)) / (np.sqrt(s / (1 - 0.999**t)) + 1e-8)
        w = w - lr * (step + (wd * w if optimizer == "adamw" else 0))
    return w


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_optimizers_match_pytorch_update_rules(optimizer, weight_decay):
    config = RunConfig(optimizer=optimizer, lr=0.1, momentum=0.9, weight_decay=weight_decay)
    tx = build_optimizer(config, 10)
    w0 = np.array([1.0, -2.0, 0.5], np.float32)
    grads = [np.array(g, np.float32) for g in ([0.5, 1.0, -0.25], [-1.0, 0.25, 2.0], [0.3] * 3)]
    params = {"w": w0}
    opt_state = tx.init(params)
    for g in grads:
        updates, opt_state = tx.update({"w": g}, opt_state, params)
        params = optax.apply_updates(params, updates)
    expected = _torch_rule(optimizer, 0.1, 0.9, weight_decay, w0.astype(np.float64), grads)
    np.testing.assert_allclose(params["w"], expected, rtol=1e-5)


@pytest.mark.parametrize(
    "config, images",
    [
        (dataclasses.replace(CNN, epochs=1), 160),
        # Batch 1: unrolled in a 4-step program, its steps compiled otherwise than in the
        # scans, and the sigmoid MLP's parameters differed in their last bits.
        (RunConfig(model="mlp", dataset="mnist", mlp_hidden=(8,), batch_size=1, epochs=1), 20),
    ],
)
def test_epoch_modes_agree(monkeypatch, config, images):
    # 20 steps per epoch in scans of 8, 8 and 4 vs a loop fed in blocks of 8, 8 and 4
    # batches (the last padded to 8), run LOOP_UNROLL = 4 steps per call (4+4, 4+4, 4):
    # dropout keys come from the same fold_in(step) chain in every mode, and every step is
    # the same compiled scan body, so the parameters are the same bit for bit.
    monkeypatch.setattr(epochs, "CHUNK_STEPS", 8)
    monkeypatch.setattr(epochs, "SYNC_EVERY", 8)
    monkeypatch.setattr(epochs, "LOOP_UNROLL_MIN_STEPS", 20)
    train_set, test_set = tiny_dataset(images), tiny_dataset(20, seed=1)
    loop, chunk = (
        quiet_fit(config, train_set, test_set, epoch_mode=mode) for mode in ("loop", "chunk")
    )
    jax.tree.map(np.testing.assert_array_equal, loop.state.params, chunk.state.params)
    assert loop.history[0]["train_loss"] == chunk.history[0]["train_loss"]


@pytest.mark.parametrize(
    "mode, images, unroll_min_steps",
    [
        ("loop", 192, 24),  # 24 steps, at least the minimum: LOOP_UNROLL per call
        ("loop", 200, None),  # 25 steps, under the default minimum: one per call
        ("scan", 192, None),
    ],
)
def test_an_epoch_compiles_only_its_timed_step(mode, images, unroll_min_steps, monkeypatch):
    # The epoch's one program (its step, steps or scan) compiles on the first epoch, timed in
    # `compile_seconds`; anything else compiled there (the epoch-order draw once was) would go
    # unseen into the epoch's time, and a short loop epoch compiling a 4-step program as
    # well as a 1-step one for its leftover would pay two compiles. Dataset sizes no other
    # test uses, so no jit cache hides a compile.
    compiles = []

    def listen(event, seconds, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            compiles.append(seconds)

    if unroll_min_steps is not None:
        monkeypatch.setattr(epochs, "LOOP_UNROLL_MIN_STEPS", unroll_min_steps)
    config = dataclasses.replace(CNN, epochs=1)
    train_set = tiny_dataset(images)
    setup = train.build_setup(config, train_set)
    state = train.init_state(config, setup)
    runner = epochs.EpochRunner(train.make_train_step(setup), train_set, config, mode)
    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        per_epoch = []
        for epoch in (1, 2):
            before, timed = len(compiles), runner.compile_seconds
            state = runner.run(state, epoch, lambda *_: None)
            per_epoch.append((len(compiles) - before, runner.compile_seconds > timed))
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)
    assert per_epoch == [(1, True), (0, False)]


@pytest.mark.parametrize("mode, firsts", [("loop", [0, 10, 20]), ("chunk", [0, 10, 20]),
                                          ("scan", [0])])  # fmt: skip
def test_each_epoch_trains_on_its_own_drawn_order_and_reports_every_step(mode, firsts,
                                                                         monkeypatch):
    # A fake step whose loss encodes its batch (example ids in the pixels): the reports must
    # give steps 0, 1, ... in order (a divergence names its step from them), and an epoch's
    # order must be the documented draw from the seed and the epoch alone, so a resumed run
    # (or a later version) draws it again. 25 steps of 2, reported 10 at a time.
    monkeypatch.setattr(epochs, "CHUNK_STEPS", 10)
    monkeypatch.setattr(epochs, "SYNC_EVERY", 10)
    ids = np.arange(51, dtype=np.uint8)
    data = Dataset(ids.reshape(51, 1, 1, 1), ids.astype(np.int32) % 3, CLASSES, "ids")
    config = dataclasses.replace(MLP, batch_size=2, seed=7)

    def step(state, batch, key):
        images, labels = batch
        code = images[:, 0, 0, 0].astype(jnp.float32) @ jnp.array([256.0, 1.0])
        return state + 1, {"loss": code, "correct": labels.sum()}

    runner = epochs.EpochRunner(step, data, config, mode)
    state, visited = jnp.zeros((), jnp.int32), []
    for epoch in (1, 2):
        reports = []
        state = runner.run(state, epoch, lambda first, losses, _: reports.append((first, losses)))
        assert [first for first, _ in reports] == firsts
        codes = np.concatenate([losses for _, losses in reports]).astype(int)
        visited.append(np.stack([codes // 256, codes % 256], axis=1).reshape(-1))
        data_key = jax.random.fold_in(jax.random.key(config.seed), 1)  # the init key folds 0
        perm_key = jax.random.split(jax.random.fold_in(data_key, epoch))[0]
        np.testing.assert_array_equal(visited[-1], jax.random.permutation(perm_key, 51)[:50])
    assert int(state) == 50
    assert not np.array_equal(visited[0], visited[1])


def test_every_compile_of_fit_is_timed_outside_the_epochs(monkeypatch):
    # The init and the evaluation step compile before the first epoch, timed in
    # compile_seconds with the runner's programs: the evaluation step once compiled on the
    # first `evaluate`, inside epoch 1's seconds, and neither's time was reported. Dataset
    # sizes no other test uses, so no jit cache hides a compile.
    compiles = []  # (compiled by the runner, after the first epoch started)
    phase = {"runner": False, "epochs": False}
    runners = []

    def listen(event, seconds, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            compiles.append((phase["runner"], phase["epochs"]))

    def runner_compile(*args, **kwargs):
        phase["runner"] = True
        try:
            return compile_timed(*args, **kwargs)
        finally:
            phase["runner"] = False

    def capture_runner(*args):
        runners.append(make_runner(*args))
        return runners[-1]

    def log(line):  # fit's last line before the epochs
        phase["epochs"] = line.startswith("epoch mode")

    compile_timed, make_runner = epochs.compile_timed, train.make_epoch_runner
    monkeypatch.setattr(epochs, "compile_timed", runner_compile)
    monkeypatch.setattr(train, "make_epoch_runner", capture_runner)
    config, train_set = dataclasses.replace(MLP, epochs=1), tiny_dataset(208)
    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        result = train.fit(config, train_set, tiny_dataset(23, seed=1), progress=False, log=log)
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)
    others_in_epochs = [in_epochs for by_runner, in_epochs in compiles if not by_runner]
    assert len(others_in_epochs) >= 2  # the init and the evaluation step
    assert not any(others_in_epochs)
    # The warm-up's own time is added (its clock is not JAX's compile events' clock, so the
    # two are not compared).
    assert result.compile_seconds > runners[0].compile_seconds


def test_unknown_epoch_mode_is_refused():
    with pytest.raises(ConfigError, match=r"--epoch-mode must be one of auto, .*; got 'chunks'"):
        quiet_fit(MLP, tiny_dataset(32), tiny_dataset(8), epoch_mode="chunks")


def test_evaluating_an_empty_set_is_refused():
    empty = dataclasses.replace(tiny_dataset(1), images=np.zeros((0, 8, 8, 1), np.uint8),
                                labels=np.zeros(0, np.int32))  # fmt: skip
    with pytest.raises(DataError, match="synthetic: the evaluation set is empty"):
        train.evaluate(lambda params, batch: None, None, empty)


def test_divergence_names_epoch_and_step():
    config = dataclasses.replace(MLP, optimizer="sgd", lr=1e30, epochs=2)
    saved = []
    with pytest.raises(
        TrainingDiverged, match=r"loss became (nan|inf) at epoch 1 step \d+; lower --lr"
    ):
        quiet_fit(
            config, tiny_dataset(64), tiny_dataset(8), on_epoch_end=lambda *a: saved.append(a)
        )
    assert saved == []  # the diverged epoch is never checkpointed


def test_divergence_in_an_epochs_last_step_is_caught_before_its_checkpoint():
    # One step an epoch: its loss is computed before the step that overflows, so only the test
    # loss sees it. Such an epoch was once checkpointed as "the last good state".
    config = dataclasses.replace(MLP, optimizer="sgd", lr=1e37, epochs=2)
    saved, data = [], tiny_dataset(16)
    with pytest.raises(TrainingDiverged, match=r"^test loss became nan after epoch 1, its "
                       r"training losses finite; lower --lr \(now 1e\+37\)$"):  # fmt: skip
        quiet_fit(config, data, tiny_dataset(8), on_epoch_end=lambda *a: saved.append(a))
    assert saved == []


def test_batch_larger_than_training_set_is_refused():
    with pytest.raises(
        ConfigError, match="--batch-size 16 is larger than the training set \\(10 examples\\)"
    ):
        train.build_setup(MLP, tiny_dataset(10))


def test_a_batch_of_the_whole_training_set_is_one_step_an_epoch():
    # Only a batch larger than the set leaves no full batch; one of its size fits exactly.
    assert epochs.steps_per_epoch(16, tiny_dataset(16)) == 1


@pytest.mark.parametrize("mode", ["auto", "chunks"])
def test_an_epoch_runner_refuses_a_mode_it_cannot_run(mode):
    # "auto" is resolved before a runner is made; unchecked, the runner was made and its first
    # epoch ended in an AttributeError (no dataset on the device), far from the mistake.
    with pytest.raises(
        ConfigError, match=f"^epoch mode must be one of loop, chunk, scan here, got '{mode}'$"
    ):
        epochs.EpochRunner(lambda *args: None, tiny_dataset(16), MLP, mode)


def test_confusion_matrix_and_accuracies():
    labels = np.array([0, 0, 1, 1, 1, 2])
    predictions = np.array([0, 1, 1, 1, 2, 2])
    matrix = metrics.confusion_matrix(labels, predictions, 4)
    np.testing.assert_array_equal(matrix, [[1, 1, 0, 0], [0, 2, 1, 0], [0, 0, 1, 0], [0, 0, 0, 0]])
    assert metrics.accuracy(matrix) == pytest.approx(4 / 6)
    per_class = metrics.per_class_accuracy(matrix)
    np.testing.assert_allclose(per_class[:3], [0.5, 2 / 3, 1.0])
    assert np.isnan(per_class[3])


def test_random_crop_flip_draws_every_shift_and_each_flip_half_the_time():
    from jaxcifar.augment import flip, random_crop_flip, shift

    # Every pixel distinct, so an output matches one (shift, flip) of its image at most.
    # (10 wide: a smaller image's reflected border can mirror another of its views.)
    images = np.repeat(np.arange(2 * 10 * 10, dtype=np.uint8).reshape(2, 10, 10, 1), 500, axis=0)
    out = np.asarray(jax.jit(random_crop_flip)(jax.random.key(1), images))
    assert out.shape == images.shape and out.dtype == np.uint8
    offsets = [(dy, dx) for dy in range(-4, 5) for dx in range(-4, 5)]
    views, names = [], []  # every view the padding allows, of every image
    for dy, dx in offsets:
        shifted = np.asarray(shift(images, dy, dx))
        views += [shifted, np.asarray(flip(shifted))]
        names += [(dy, dx, False), (dy, dx, True)]
    matches = np.all(np.stack(views) == out, axis=(2, 3, 4))  # (views, N)
    assert (matches.sum(axis=0) == 1).all()  # each output is exactly one view of its image
    drawn = [names[i] for i in matches.argmax(axis=0)]
    assert {(dy, dx) for dy, dx, _ in drawn} == set(offsets)  # both ends of -4..4 included
    assert np.mean([mirrored for _, _, mirrored in drawn]) == pytest.approx(0.5, abs=0.05)
    unshifted = jax.jit(random_crop_flip, static_argnums=2)(jax.random.key(0), images[:8], 0)
    for image, view in zip(images[:8], np.asarray(unshifted), strict=True):
        assert np.array_equal(view, image) or np.array_equal(view, image[:, ::-1])


def test_augment_changes_what_fit_trains_on():
    train_set, test_set = tiny_dataset(128), tiny_dataset(30, seed=1)
    plain, augmented = (
        quiet_fit(dataclasses.replace(MLP, augment=augment, epochs=2), train_set, test_set)
        for augment in (False, True)
    )
    assert augmented.history[-1]["train_loss"] < augmented.history[0]["train_loss"]
    # Same seed, same batches: only the crops and flips differ.
    assert plain.history[0]["train_loss"] != augmented.history[0]["train_loss"]


def test_bfloat16_compute_reaches_fit():
    train_set, test_set = tiny_dataset(128), tiny_dataset(30, seed=1)
    exact, low = (
        quiet_fit(dataclasses.replace(MLP, dtype=dtype, epochs=1), train_set, test_set)
        for dtype in ("float32", "bfloat16")
    )
    exact_loss, low_loss = exact.history[0]["train_loss"], low.history[0]["train_loss"]
    assert 0 < abs(low_loss - exact_loss) < 0.05 * exact_loss  # rounded, and not by much


def test_fast_recipe_trains_from_a_seed_whose_init_leaves_fc4_nearly_dead(shared_data):
    # Seed 1's init leaves 4 of fc4's 16 ReLUs alive on real images. At the fast recipe's
    # former lr 0.02 its first steps killed them all and every later step stayed at chance
    # (loss ln 10 = 2.303 for 10 epochs, 10.00% test accuracy); at 0.01 the last fifth of
    # the first epoch averages 1.75. The first of the recipe's 10 epochs (its cosine schedule
    # spans all 10).
    config = dataclasses.replace(RECIPES["fast"], seed=1)
    assert config.epochs == 10
    train_set = load("cifar10", "train", data_dir=shared_data)
    setup = train.build_setup(config, train_set)
    runner = train.make_epoch_runner("chunk", config, setup, train_set)
    losses = []
    runner.run(train.init_state(config, setup), 1, lambda first, loss, correct: losses.append(loss))
    losses = np.concatenate(losses)
    assert len(losses) == 3125
    assert losses[-625:].mean() < 2.1


def test_evaluation_pads_its_last_batch_but_counts_each_example_once(monkeypatch):
    # 23 examples in batches of 10: the last is padded with 7 zero images, whose losses and
    # predictions must not reach the mean loss, the accuracy or the predictions.
    setup = train.build_setup(MLP, tiny_dataset(32))
    params = train.init_state(MLP, setup).params
    test_set = tiny_dataset(23, seed=1)
    logits = setup.model.apply(params, to_float(test_set.images))
    losses = np.asarray(train.cross_entropy(logits, test_set.labels))
    monkeypatch.setattr(train, "EVAL_BATCH", 10)
    result = train.evaluate(train.make_eval_step(setup.model), params, test_set)
    np.testing.assert_array_equal(result.predictions, np.argmax(logits, -1))
    assert result.loss == pytest.approx(losses.mean(), rel=1e-5)
    assert result.accuracy == np.mean(np.argmax(logits, -1) == test_set.labels)


def test_bfloat16_evaluation_computes_in_bfloat16():
    setup = train.build_setup(MLP, tiny_dataset(32))
    params = train.init_state(MLP, setup).params
    test_set = tiny_dataset(40, seed=1)
    batch = (test_set.images, test_set.labels)
    exact, low = (np.asarray(train.make_eval_step(setup.model, dtype=dtype)(params, batch)[0])
                  for dtype in ("float32", "bfloat16"))  # fmt: skip
    assert 0 < np.abs(low - exact).max() < 0.05 * exact.max()  # rounded, and not by much


def test_fit_records_every_reported_step_and_the_epochs_seconds_without_compiling(monkeypatch):
    # A scripted runner on a fake clock: each epoch takes 3 s, 2 of the first compiling, and
    # reports its 3 steps in two groups. The record: the mean of the steps' losses (not of
    # the groups'), correct predictions over steps x batch examples, the seconds less the
    # compiling; a NaN names its step counted from the epoch's first.
    now = [0.0]
    monkeypatch.setattr(train, "time", types.SimpleNamespace(perf_counter=lambda: now[0]))

    class Runner:
        steps, compile_seconds = 3, 0.0

        def run(self, state, epoch, report):
            now[0] += 3.0
            self.compile_seconds += 2.0 if epoch == 1 else 0.0
            report(0, np.array([1.0, 2.0], np.float32), np.array([16, 8]))
            report(2, np.array([6.0 if epoch == 1 else np.nan], np.float32), np.array([0]))
            return state

    monkeypatch.setattr(train, "make_epoch_runner", lambda *args: Runner())
    saved = []
    config = dataclasses.replace(MLP, epochs=2)
    with pytest.raises(TrainingDiverged, match=r"loss became nan at epoch 2 step 3; "):
        quiet_fit(config, tiny_dataset(48), tiny_dataset(8, seed=1),
                  on_epoch_end=lambda state, history: saved.append(list(history)))  # fmt: skip
    ((record,),) = saved
    assert record["epoch"] == 1 and config.batch_size == 16
    assert (record["train_loss"], record["train_accuracy"], record["seconds"]) == (3.0, 0.5, 1.0)
