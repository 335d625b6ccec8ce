"""The fused fast path trains exactly as the reference path: same parameters after 100 steps."""

import dataclasses
import functools
import json
import re
import subprocess
import sys
import types

import jax
import numpy as np
import pytest

from jaxcifar import compiling, epochs, train
from jaxcifar.bench.xla_cost import kernel_counts
from jaxcifar.config import RunConfig
from jaxcifar.data.dataset import CLASS_NAMES, Dataset
from jaxcifar.errors import ConfigError
from jaxcifar.fused import epoch

# 2 epochs of 50 steps: 100 steps that cross an epoch boundary (a new order and new keys).
CONFIG = RunConfig(epochs=2, batch_size=4, lr=0.01, seed=3)


@pytest.fixture(scope="module")
def dataset() -> Dataset:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (202, 32, 32, 3), dtype=np.uint8)  # 2 left over per epoch
    labels = rng.integers(0, 10, 202).astype(np.int32)
    return Dataset(images, labels, CLASS_NAMES["cifar10"], source="synthetic")


@pytest.fixture(scope="module")
def reference(dataset):
    """The reference path: `jaxcifar.train`'s jitted step in a Python loop, 2 epochs."""
    setup = train.build_setup(CONFIG, dataset)
    state = train.init_state(CONFIG, setup)
    initial = jax.device_get(state.params)
    runner = epochs.EpochRunner(train.make_train_step(setup), dataset, CONFIG, "loop")
    losses, corrects = [], []
    for e in (1, 2):
        state = runner.run(state, e, functools.partial(record, losses, corrects))
    return initial, jax.device_get(state.params), np.concatenate(losses), np.concatenate(corrects)


def record(losses: list, corrects: list, _first: int, loss, correct) -> None:
    """An epoch runner's report: keep its steps' losses and correct counts."""
    losses.append(loss)
    corrects.append(correct)


def run_fused(dataset, initial, path, unroll=1):
    """The fused path from the reference's initial parameters, 2 epochs, through the same
    `EpochRunner` interface (a `TrainState` in and out)."""
    setup = train.build_setup(CONFIG, dataset)
    params = jax.device_put(initial)
    state = train.TrainState(params, setup.optimizer.init(params), jax.numpy.zeros((), "int32"))
    runner = epoch.FusedRunner(CONFIG, dataset, path=path, unroll=unroll)
    losses, corrects = [], []
    for e in (1, 2):
        state = runner.run(state, e, functools.partial(record, losses, corrects))
    assert int(state.step) == 100 and int(state.opt_state[1].count) == 100
    return jax.device_get(state.params), np.concatenate(losses), np.concatenate(corrects)


# Unroll 3 leaves 50 % 3 = 2 steps after the loop; Pallas, interpreted on a CPU, at unroll 2
# (no steps after the loop: 2 step copies in the program, not 5, 20 s rather than 70), for
# the kernels' offsets inside an unrolled loop. Offsets above 1 are tested kernel by kernel
# (test_triton_blocks, test_fused_pallas).
@pytest.mark.parametrize(
    "path, unroll",
    [("fused", 1), ("fused", 3), ("fused-pallas", 1), ("fused-pallas-all", 1),
     ("fused-pallas-all", 2)],  # fmt: skip
)
def test_fused_path_gives_the_reference_parameters_after_100_steps(
    dataset, reference, path, unroll
):
    initial, expected, expected_losses, expected_corrects = reference
    params, losses, corrects = run_fused(dataset, initial, path, unroll)
    np.testing.assert_allclose(losses, expected_losses, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(corrects, expected_corrects)
    for name in expected:
        for kind in ("kernel", "bias"):
            moved = np.abs(expected[name][kind] - initial[name][kind]).max()
            assert moved > 1e-3, (name, kind)  # the comparison below is not trivially met
            np.testing.assert_allclose(
                params[name][kind], expected[name][kind], atol=2e-5, rtol=1e-4
            )


def test_a_fused_epoch_hands_its_state_to_another_epoch_mode(dataset, reference):
    """Epoch 1 fused, epoch 2 in the loop path from the state it returned, in one process:
    the loop's runner donates the whole state, so it must not hold one buffer twice (the
    step and optax's count); then the reference's parameters, to the bit."""
    initial, expected, *_ = reference
    setup = train.build_setup(CONFIG, dataset)
    params = jax.device_put(initial)
    state = train.TrainState(params, setup.optimizer.init(params), jax.numpy.zeros((), "int32"))
    state = epoch.FusedRunner(CONFIG, dataset).run(state, 1, lambda *_: None)
    loop = epochs.EpochRunner(train.make_train_step(setup), dataset, CONFIG, "loop")
    state = loop.run(state, 2, lambda *_: None)
    for name in expected:
        for kind in ("kernel", "bias"):
            np.testing.assert_array_equal(state.params[name][kind], expected[name][kind])


def test_fused_path_follows_a_schedule_across_epochs_bit_for_bit(dataset):
    """The fused step's learning rate is the schedule's at the epoch's first step plus the
    step's index (the state's step count moves once an epoch): the same rates, so the same
    parameters as the reference path, to the bit, through a one-cycle ramp and decay."""
    config = dataclasses.replace(CONFIG, schedule="onecycle")
    setup = train.build_setup(config, dataset)
    start = train.init_state(config, setup)
    initial = jax.device_get(start.params)
    reference = epochs.EpochRunner(train.make_train_step(setup), dataset, config, "loop")
    fused = epoch.FusedRunner(config, dataset, path="fused")
    finals = []
    for runner in (reference, fused):
        params = jax.device_put(initial)
        state = train.TrainState(params, setup.optimizer.init(params), jax.numpy.zeros((), "int32"))
        for e in (1, 2):
            state = runner.run(state, e, lambda *_: None)
        finals.append(jax.device_get(state.params))
    for name in finals[0]:
        for kind in ("kernel", "bias"):
            np.testing.assert_array_equal(finals[1][name][kind], finals[0][name][kind])


@pytest.mark.parametrize("unroll", [1, 2])
def test_the_pallas_all_epochs_step_is_its_six_kernels_and_nothing_else(
    dataset, monkeypatch, unroll
):
    """Lowered for CUDA (no GPU needed: `jax.default_backend` says "gpu", so the kernels are
    compiled, not interpreted), an iteration of the epoch's loop is its steps' six Pallas
    kernels each and the loop's counter: no XLA op gathers the batch, draws dropout bits,
    computes or slices a step's index, counts steps or records the loss; only reshapes of
    the same bytes and constants beside them (a constant learning rate), once ops nothing
    reads are dropped, as XLA drops them."""
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    runner = epoch.FusedRunner(CONFIG, dataset, path="fused-pallas-all", unroll=unroll)
    state = epoch.to_fused_state(train.init_state(CONFIG, train.build_setup(CONFIG, dataset)))
    lowered = runner._run_epoch.trace(state, runner.images, runner.labels, np.int32(1)).lower(
        lowering_platforms=("cuda",)
    )
    lines = lowered.as_text().splitlines()
    # The loop over the steps: the one whose body launches the kernels.
    (start,) = [i for i, line in enumerate(lines) if line.strip() == "} do {"
                and any("xla.gpu.triton" in body for body in lines[i : i + 40])]  # fmt: skip
    indent = lines[start][: len(lines[start]) - len(lines[start].lstrip())]
    end = lines.index(indent + "}", start)
    body = lines[start + 1 : end]
    # The ops the iteration's results need, from its return back: every op a value is
    # defined by (stablehlo's ops, quoted ones like "stablehlo.gather", calls of functions
    # that hold more, like func.call @clip).
    assert body[-1].lstrip().startswith("stablehlo.return")
    needed = set(re.findall(r"%[\w]+", body[-1]))
    live = []
    for line in reversed(body[:-1]):
        defined = re.match(r'\s*%([\w]+)(?::\d+)? = "?([\w.]+)', line)
        if defined and "%" + defined[1] in needed:
            live.append(defined[2])
            needed |= set(re.findall(r"%[\w]+", line.split("=", 1)[1]))
    free = {"stablehlo.custom_call", "stablehlo.reshape", "stablehlo.broadcast_in_dim",
            "stablehlo.constant"}  # fmt: skip
    assert live.count("stablehlo.custom_call") == 6 * unroll
    assert sorted(set(live) - free) == ["stablehlo.add"], live
    assert live.count("stablehlo.add") == 1  # the loop's counter


@pytest.mark.parametrize(
    "change, named",
    [
        ({"optimizer": "adam"}, "optimizer 'adam'"),
        ({"weight_decay": 5e-4}, "weight_decay 0.0005"),
        ({"augment": True}, "augment True"),
        ({"model": "mlp", "dtype": "bfloat16"}, "model 'mlp' (needs 'cnn'), dtype 'bfloat16'"),
    ],
)
def test_fused_path_refuses_recipes_it_does_not_compute(dataset, change, named):
    expected = (
        r"fused path \(--epoch-mode fused, fused-pallas, fused-pallas-all\) runs the seed "
        "recipe's kind only"
    )
    with pytest.raises(ConfigError, match=expected) as info:
        epoch.FusedRunner(dataclasses.replace(CONFIG, **change), dataset)
    assert named in str(info.value)


def test_fused_path_refuses_an_unknown_path_unroll_or_several_devices(dataset):
    expected = "path must be one of fused, fused-pallas, fused-pallas-all; got 'cuda'"
    with pytest.raises(ConfigError, match=expected):
        epoch.FusedRunner(CONFIG, dataset, path="cuda")
    with pytest.raises(ConfigError, match="unroll must be a positive integer; got 0"):
        epoch.FusedRunner(CONFIG, dataset, unroll=0)
    with pytest.raises(ConfigError, match=r"one device in one process; this run has 8 device\(s\)"):
        epoch.FusedRunner(CONFIG, dataset, mesh=types.SimpleNamespace(size=8))
    with pytest.raises(ConfigError, match=r"momentum 0.0 \(needs > 0\)"):
        epoch.FusedRunner(dataclasses.replace(CONFIG, momentum=0.0), dataset)
    largest = dataclasses.replace(CONFIG, batch_size=epoch.PALLAS_HEAD_MAX_BATCH)
    large = dataclasses.replace(CONFIG, batch_size=epoch.PALLAS_HEAD_MAX_BATCH + 1)
    for path in ("fused-pallas", "fused-pallas-all"):
        expected = r"--batch-size up to 128 .*; got 129: use --epoch-mode fused"
        with pytest.raises(ConfigError, match=expected):
            epoch.FusedRunner(large, dataset, path=path)
        epoch.check_config(largest, path)  # "up to": 128 itself is taken
    epoch.check_config(large, "fused")  # the XLA head takes any batch


def test_a_training_set_past_the_kernels_int32_offsets_is_refused(dataset, monkeypatch):
    """fused-pallas-all's kernels index the whole training set's pixels in int32 on a GPU
    (interpret mode would not overflow): a larger set is refused, naming the other paths."""
    monkeypatch.setattr(epoch, "PALLAS_MAX_TRAINING_PIXELS", dataset.images.size - 1)
    expected = r"--epoch-mode fused-pallas-all reads the batch .* use --epoch-mode fused-pallas"
    with pytest.raises(ConfigError, match=expected):
        epoch.FusedRunner(CONFIG, dataset, path="fused-pallas-all")
    epoch.FusedRunner(CONFIG, dataset, path="fused-pallas")  # gathers the batch in XLA
    monkeypatch.setattr(epoch, "PALLAS_MAX_TRAINING_PIXELS", dataset.images.size)
    epoch.FusedRunner(CONFIG, dataset, path="fused-pallas-all")  # up to the limit itself


def test_every_epoch_mode_of_fit_records_the_same_epoch_and_the_cli_offers_every_mode(dataset):
    from jaxcifar.commands import train as train_command

    assert train_command.EPOCH_MODES == train.EPOCH_MODES
    assert tuple(epoch.PALLAS_PARTS) == train.FUSED_MODES  # one list of fused paths
    # 101 steps: loop and chunk report them as 100 + 1, scan and fused as one group of 101.
    config = dataclasses.replace(CONFIG, epochs=1, batch_size=2)
    test_set = dataset.subset(50, seed=1)
    runs = {
        mode: train.fit(config, dataset, test_set, epoch_mode=mode, progress=False,
                        log=lambda _: None)  # fmt: skip
        for mode in ("loop", "chunk", "scan", "fused")
    }
    params, records = {}, {}
    for mode, result in runs.items():
        params[mode] = jax.tree.leaves(jax.device_get(result.state.params))
        records[mode] = {k: v for k, v in result.history[0].items() if k != "seconds"}
    for mode in ("chunk", "scan", "fused"):  # the same steps, bit for bit, and the same record
        assert all(map(np.array_equal, params[mode], params["loop"])), mode
        assert records[mode] == records["loop"], mode


def test_a_graph_epoch_asks_xla_for_one_command_buffer_on_a_gpu_only(dataset, monkeypatch):
    """`graph=True` compiles the epoch with GRAPH_EPOCH_OPTIONS on a GPU (the loop then runs
    inside one CUDA graph: benchmarks/gpu_programs.py) and trains exactly as without; other
    backends have no command buffers and compile as usual."""
    from jaxcifar.bench import seed_recipe

    asked = []
    real_compile_timed = epoch.compile_timed

    def compile_timed(*args, options=None):
        asked.append(options)
        return real_compile_timed(*args, options=options)

    monkeypatch.setattr(epoch, "compile_timed", compile_timed)
    setup = train.build_setup(CONFIG, dataset)
    finals = []
    for backend, graph in (("cpu", False), ("cpu", True), ("gpu", True)):
        monkeypatch.setattr(jax, "default_backend", lambda backend=backend: backend)
        runner = epoch.FusedRunner(CONFIG, dataset, path="fused", graph=graph)
        state = runner.run(train.init_state(CONFIG, setup), 1, lambda *_: None)
        finals.append(jax.tree.leaves(jax.device_get(state.params)))
    assert asked == [None, None, epoch.GRAPH_EPOCH_OPTIONS]
    assert all(map(np.array_equal, finals[1], finals[0]))
    # (Told it is a GPU, this CPU also drops its own convolution options: float32 rounding.)
    for leaf, expected in zip(finals[2], finals[0]):
        np.testing.assert_allclose(leaf, expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="only the fused paths compile an epoch as one program"):
        seed_recipe.measure_path("scan", CONFIG, dataset, dataset, graph=True)


def test_measured_paths_write_the_seed_recipe_results_schema(dataset, tmp_path):
    from jaxcifar.bench import seed_recipe

    config = RunConfig(epochs=1, batch_size=4)
    train_set, test_set = dataset.subset(40), dataset.subset(20, seed=1)
    rows = [
        seed_recipe.measure_path(path, config, train_set, test_set, unroll=2, log=lambda _: None,
                             profile=path == "fused")  # fmt: skip
        for path in ("loop", "fused")
    ]
    # The profiled epoch ran (None would say it failed); a CPU has no device planes.
    assert "profile" not in rows[0] and isinstance(rows[1]["profile"], list)
    assert (rows[1]["profile"] == []) == (jax.default_backend() == "cpu")
    failures = ["fused-pallas: RuntimeError: the GPU compiler said no"]
    json_path, markdown_path = seed_recipe.write_results(
        rows, tmp_path / "seed-recipe-cpu.json", failures
    )
    written = json.loads(json_path.read_text())
    assert written == rows
    for row, path in zip(written, ("loop", "fused")):
        assert {"device": str, "epochs": int, "batch_size": int, "wall_seconds": float,
                "compile_seconds": float, "test_accuracy": float, "path": str}.items() <= {
            key: type(row[key]) for key in row}.items()  # fmt: skip
        assert (row["path"], row["epochs"], row["batch_size"], row["steps"]) == (path, 1, 4, 10)
        assert 0 < row["compile_seconds"] < row["wall_seconds"]
        assert row["kernels_per_step"] == sum(row["kernel_counts"].values()) > 10
    # Same order, masks and updates: the two paths end at the same loss and accuracy.
    loop_loss, fused_loss = (row["last_epoch_train_loss"] for row in written)
    assert fused_loss == pytest.approx(loop_loss, rel=1e-5)
    assert written[0]["test_accuracy"] == written[1]["test_accuracy"]
    markdown = markdown_path.read_text()
    assert "| fused | 2 | 40 | 1 | 10 |" in markdown
    assert markdown.endswith("Failed:\n\n- fused-pallas: RuntimeError: the GPU compiler said no\n")
    # What a later process with --append starts from: the same rows and failures.
    assert seed_recipe.read_results(json_path) == (rows, failures)
    assert seed_recipe.read_results(tmp_path / "none.json") == ([], [])
    # A GPU's profile: a table per profiled row, before the failures, which still read back.
    kernel = {"plane": "/device:GPU:0", "line": "Stream #13", "name": "conv_relu_pool",
              "count": 20, "total_us": 50.0, "mean_us": 2.5}  # fmt: skip
    profiled = [{**rows[1], "profile": [kernel]}]
    json_path, markdown_path = seed_recipe.write_results(profiled, tmp_path / "gpu.json", failures)
    markdown = markdown_path.read_text()
    assert "## Device time by kernel: fused (unroll 2), one more epoch" in markdown
    assert "| conv_relu_pool | /device:GPU:0 / Stream #13 | 20 | 0.05 | 2.50 | 5.00 |" in markdown
    assert seed_recipe.read_results(json_path) == (profiled, failures)


def test_loop_step_kernels_are_counted_on_the_program_the_loop_path_trains(dataset):
    # On a CPU, XLA's defaults hand convolutions to YNNPACK: other fusions, other counts.
    from jaxcifar.bench import seed_recipe

    config = RunConfig(epochs=1, batch_size=4)
    setup = train.build_setup(config, dataset)
    state = train.init_state(config, setup)
    runner = types.SimpleNamespace(config=config)
    counted = seed_recipe._step_kernels("loop", runner, setup, state.params, dataset)
    batch = (dataset.images[:4], dataset.labels[:4])
    lowered = train.make_train_step(setup).lower(state, batch, jax.random.key(0))
    assert counted == dict(kernel_counts(compiling.compile_program(lowered).as_text()))


def test_a_program_whose_kernels_cannot_be_counted_keeps_its_timed_row(dataset, monkeypatch):
    from jaxcifar.bench import seed_recipe

    def unreadable(hlo_text, **kwargs):  # as the HLO parser fails on a text without ENTRY
        raise KeyError("ENTRY")

    monkeypatch.setattr(seed_recipe, "kernel_counts", unreadable)
    logged = []
    config = RunConfig(epochs=1, batch_size=4)
    row = seed_recipe.measure_path("fused", config, dataset.subset(16), dataset.subset(8, seed=1),
                               log=logged.append)  # fmt: skip
    assert row["kernels_per_step"] is None and row["kernel_counts"] is None
    assert row["steps"] == 4 and 0 < row["compile_seconds"] < row["wall_seconds"]
    assert "fused: kernels per step not counted (KeyError: 'ENTRY')" in logged
    assert "| fused | 1 | 16 | 1 | 4 |" in seed_recipe.render_markdown([row])


@pytest.mark.parametrize(
    "flags, backend, message",
    [
        (["--epoch-mode", "fused", "--recipe", "fast"], "cpu",
         "the fused path (--epoch-mode fused, fused-pallas, fused-pallas-all) runs the seed "
         "recipe's kind only; "
         "got optimizer 'nesterov' (needs 'sgd'), weight_decay 0.0005 (needs 0.0)"),
        (["--epoch-mode", "fused-pallas-all"], "tpu",
         "--epoch-mode fused-pallas-all runs its Pallas kernels through Triton, on a GPU (or "
         "interpreted on a CPU); this machine's backend is tpu: use --epoch-mode fused, the "
         "same path in plain XLA"),
    ],
)  # fmt: skip
def test_train_command_refuses_a_fused_run_it_cannot_make_before_loading_data(
    flags, backend, message, tmp_path, capsys, monkeypatch
):
    from jaxcifar import cli

    monkeypatch.setattr(jax, "default_backend", lambda: backend)
    data_dir, out = str(tmp_path / "no-such-data"), str(tmp_path / "run")
    argv = ["train", *flags, "--data-dir", data_dir, "--out", out]
    assert cli.main(argv) == 2
    assert capsys.readouterr().err.strip() == f"jaxcifar train: error: {message}"
    assert not (tmp_path / "run").exists()


def test_only_the_pallas_paths_import_pallas():
    # Pallas is experimental and its Triton backend deprecated from JAX 0.11: the scan, loop
    # and fused paths (and their benchmark) must not need it to import.
    code = (
        "import sys; import jaxcifar.bench.seed_recipe, jaxcifar.fused.epoch as e; "
        "assert not [m for m in sys.modules if 'pallas' in m], 'imported early'; "
        "e.step_parts('fused-pallas-all'); assert 'jax.experimental.pallas' in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("path", ["fused-pallas", "fused-pallas-all"])
def test_a_jax_without_pallas_triton_gets_a_clear_error_naming_the_other_fused_path(
    path, tmp_path, capsys, monkeypatch
):
    from jax.experimental import pallas

    from jaxcifar import cli, fused

    # The kernels' modules imported afresh, and their `from jax.experimental.pallas import
    # triton` failing as on a JAX that dropped it (a None entry in sys.modules makes it raise).
    for module in ("pallas_head", "pallas_convs"):
        monkeypatch.delattr(fused, module, raising=False)
        monkeypatch.delitem(sys.modules, f"jaxcifar.fused.{module}", raising=False)
    monkeypatch.delattr(pallas, "triton", raising=False)
    monkeypatch.setitem(sys.modules, "jax.experimental.pallas.triton", None)
    argv = ["train", "--epoch-mode", path, "--data-dir", str(tmp_path), "--out",
            str(tmp_path / "run")]  # fmt: skip
    assert cli.main(argv) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith(
        f"jaxcifar train: error: --epoch-mode {path} needs Pallas' Triton backend, which "
        f"this JAX ({jax.__version__}) does not import ("
    )
    assert error.endswith("use --epoch-mode fused, the same path in plain XLA")


def test_a_measured_row_counts_every_epochs_steps_and_times_training_only(dataset, monkeypatch):
    # A stand-in chunk runner on a fake clock: each epoch takes 1 s and reports 4 steps'
    # losses, all equal to the epoch's number; the evaluation after training takes 100 s.
    from jaxcifar.bench import seed_recipe

    now = [0.0]

    class Runner:
        steps, compile_seconds = 4, 0.5

        def run(self, state, epoch, report):
            now[0] += 1.0
            report(0, np.full(4, float(epoch), np.float32), np.zeros(4, np.int32))
            return state

    def evaluate(*args):
        now[0] += 100.0
        return types.SimpleNamespace(accuracy=0.25)

    kernel = {"plane": "/device:GPU:0", "line": "Stream #1", "name": "step", "count": 12,
              "total_us": 40.0, "mean_us": 10 / 3}  # fmt: skip
    monkeypatch.setattr(seed_recipe, "time", types.SimpleNamespace(perf_counter=lambda: now[0]))
    monkeypatch.setattr(train, "make_epoch_runner", lambda *args: Runner())
    monkeypatch.setattr(train, "evaluate", evaluate)
    monkeypatch.setattr(seed_recipe, "traced_event_times", lambda run: (run(), [kernel])[1])
    config = RunConfig(epochs=2, batch_size=4)
    row = seed_recipe.measure_path("chunk", config, dataset.subset(16), dataset.subset(8, seed=1),
                               unroll=3, profile=True, log=lambda _: None)  # fmt: skip
    assert (row["steps"], row["wall_seconds"], row["test_images"]) == (8, 2.0, 8)
    assert row["unroll"] is None  # only a fused path unrolls
    assert row["last_epoch_train_loss"] == 2.0  # the second epoch's alone
    markdown = seed_recipe.render_markdown([row])
    assert "| chunk | - | 16 | 2 | 8 | 2.00 | 0.50 | 187.500 |" in markdown  # (2 - 0.5) s / 8
    assert "4 steps; us/step" in markdown  # the traced epoch's: 40 us over its 4 steps
    assert "| step | /device:GPU:0 / Stream #1 | 12 | 0.04 | 3.33 | 10.00 |" in markdown
    graph = {**row, "path": "fused", "unroll": 1, "graph": True}
    assert "| fused (graph epoch) | 1 |" in seed_recipe.render_markdown([graph])


def test_fused_kernels_per_step_do_not_grow_with_the_unroll(dataset):
    # The unrolled loop body holds `unroll` steps: its counts are per step once divided
    # (XLA fuses a little across the two steps, so not exactly the unroll-1 count).
    from jaxcifar.bench import seed_recipe

    config = RunConfig(epochs=1, batch_size=4)
    setup = train.build_setup(config, dataset)
    params = train.init_state(config, setup).params
    counts = [
        seed_recipe._step_kernels("fused", epoch.FusedRunner(config, dataset, path="fused",
                                                         unroll=unroll), setup, params, dataset)
        for unroll in (1, 2)
    ]  # fmt: skip
    one, two = (sum(count.values()) for count in counts)
    assert 0.5 * one < two < 1.5 * one
