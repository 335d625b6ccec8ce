"""The benchmark tool: timing statistics, XLA cost analysis, ratios, the PyTorch reference's
architecture, and one tiny end-to-end run of `jaxcifar bench` (schema and files, no timings)."""

import datetime
import io
import json
import os
import signal
import sys
import time
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcifar import atomic, cli, compiling, epochs, models, parallel
from jaxcifar.bench import (
    environment, jax_cases, numpy_reference, output, suite, timing, torch_reference,
)
from jaxcifar.bench.rows import Row, add_ratios
from jaxcifar.bench.settings import Settings
from jaxcifar.bench.timing import TimingBudget, percentiles, time_steps
from jaxcifar.bench.xla_cost import (
    flops, kernel_bytes, kernel_counts, loop_command_buffers, loop_trip_count, program_memory_bytes,
)
from jaxcifar.compiling import compile_timed
from jaxcifar.interrupt import Interrupted


def test_percentiles_interpolate_linearly():
    stats = percentiles(np.array([5.0, 1.0, 3.0, 2.0, 4.0]))
    assert stats == {"median": 3.0, "p10": 1.4, "p90": 4.6}


def _fake_clock(monkeypatch, *modules) -> list[float]:
    """A clock that stands still unless the test moves it (`now[0] += s`), read as
    `time.perf_counter` by `modules` only; returns `now`."""
    now = [0.0]
    clock = types.SimpleNamespace(perf_counter=lambda: now[0])
    for module in modules:
        monkeypatch.setattr(module, "time", clock)
    return now


def test_fixed_budget_runs_warmup_then_exactly_n_timed_steps(monkeypatch):
    now = _fake_clock(monkeypatch, timing)
    calls = []

    def step():  # call k takes k seconds
        calls.append(1)
        now[0] += len(calls)

    seconds = time_steps(step, TimingBudget.fixed(3, warmup=2))
    assert len(calls) == 5
    np.testing.assert_array_equal(seconds, [3.0, 4.0, 5.0])  # the two warm-up calls untimed


def test_time_boxed_budget_stops_at_min_steps_when_time_is_up_and_at_max_steps():
    assert len(time_steps(lambda: None, TimingBudget(0, min_steps=2, min_seconds=0.0))) == 2
    assert len(time_steps(lambda: None, TimingBudget(0, 2, min_seconds=60.0, max_steps=7))) == 7
    with pytest.raises(ValueError, match="min_steps"):
        TimingBudget(min_steps=0)


def test_cost_analysis_counts_a_matmul_as_2mkn_flops():
    a, b = jnp.ones((8, 16)), jnp.ones((16, 4))
    compiled = compile_timed(jax.jit(jnp.dot), a, b)
    assert flops(compiled.executable) == 2 * 8 * 16 * 4
    assert 0 < compiled.lower_seconds < compiled.compile_seconds
    np.testing.assert_array_equal(compiled.executable(a, b), np.full((8, 4), 16.0))


def test_program_memory_is_the_compiled_programs_own_and_counts_a_donated_buffer_once():
    # Per program, so a large case run earlier in the process does not show in a small one
    # (the device's peak_bytes_in_use never goes down); the CPU backend reports it too.
    big = jnp.ones((1024, 1024))
    compile_timed(jax.jit(jnp.matmul), big, big).executable(big, big).block_until_ready()
    x = jnp.ones((64, 32))  # 8 KiB
    double = compile_timed(jax.jit(lambda x: 2 * x), x).executable
    assert program_memory_bytes(double) == 2 * x.nbytes
    donated = compile_timed(jax.jit(lambda x: 2 * x, donate_argnums=0), x).executable
    assert program_memory_bytes(donated) == x.nbytes
    no_analysis = types.SimpleNamespace(memory_analysis=lambda: None)
    assert program_memory_bytes(no_analysis) is None


def _row(framework, case="train_step", dtype="float32", median=1.0, batch_size=4, **fields):
    steps = {"median": median, "p10": median, "p90": median}
    return Row(framework, "cnn", case, batch_size, dtype, (32, 32, 3), steps, 1, **fields)


def test_ratios_compare_with_the_jax_float32_row_of_the_same_case():
    jax_f32, torch = _row("jax", median=2.0), _row("torch", median=3.0)
    jax_bf16 = _row("jax", dtype="bfloat16", median=4.0)
    loop = _row("jax", "epoch_loop", epoch_seconds=6.0)
    scan = _row("jax", "epoch_scan", epoch_seconds=2.0)
    add_ratios([jax_f32, jax_bf16, torch, loop, scan])
    assert torch.jax_speedup == 1.5 and jax_bf16.speedup_vs_float32 == 0.5
    assert scan.speedup_vs_loop == 3.0
    assert jax_f32.jax_speedup is None and jax_f32.speedup_vs_float32 is None
    assert torch.to_dict()["images_per_second"] == 4 / 3.0


def _fake_torch(monkeypatch, cuda: bool) -> None:
    """A stand-in torch in sys.modules (torch is an optional extra, absent in CI): its
    `torch.nn` layers are tuples (name, args, kwargs), its Sequential a list of them."""
    torch, nn = types.ModuleType("torch"), types.ModuleType("torch.nn")
    for name in ("Conv2d", "ReLU", "MaxPool2d", "Dropout", "Flatten", "Linear"):
        setattr(nn, name, lambda *args, _name=name, **kwargs: (_name, args, kwargs))
    nn.Sequential = lambda *layers: list(layers)
    torch.nn = nn
    torch.cuda = types.SimpleNamespace(is_available=lambda: cuda)
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "torch.nn", nn)


def test_torch_missing_says_how_to_install_it_or_why_it_cannot_run(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError
    reason = torch_reference.torch_missing()
    assert reason.startswith("torch is not installed (") and reason.endswith(
        "install the extra: pip install 'jaxcifar[bench]'"
    )
    _fake_torch(monkeypatch, cuda=False)
    monkeypatch.setattr(torch_reference, "_jax_on_gpu", lambda: False)
    assert torch_reference.torch_missing() is None
    monkeypatch.setattr(torch_reference, "_jax_on_gpu", lambda: True)
    assert torch_reference.torch_missing() == (
        "JAX runs on a GPU but this torch build has no CUDA: the reference would run elsewhere"
    )


def test_torch_seed_cnn_has_the_layers_and_parameter_count_of_the_jax_cnn(monkeypatch):
    _fake_torch(monkeypatch, cuda=False)
    layers = torch_reference.build_seed_cnn()
    assert [name for name, _, _ in layers] == [
        "Conv2d", "ReLU", "MaxPool2d", "Conv2d", "ReLU", "MaxPool2d", "Dropout", "Flatten",
        *["Linear", "ReLU"] * len(models.cnn.HIDDEN), "Linear",
    ]  # fmt: skip
    assert layers[6][1] == (models.cnn.DROPOUT_RATE,)
    count = 0  # torch's Conv2d (in, out, k) and Linear (in, out) have biases by default
    for name, args, kwargs in layers:
        if name == "Conv2d":
            (n_in, n_out, k), padding = args, kwargs["padding"]
            assert padding == 1  # "same" 3x3 convolutions, as the JAX model's
            count += n_out * n_in * k * k + n_out
        elif name == "Linear":
            n_in, n_out = args
            count += n_in * n_out + n_out
    jax_params = models.cnn.init(jax.random.key(0))
    assert count == models.count_parameters(jax_params) == 147_754


def test_plan_records_why_the_torch_reference_was_skipped(monkeypatch):
    monkeypatch.setattr(torch_reference, "torch_missing", lambda: "torch is not installed")
    settings = Settings(models=("cnn",), batch_sizes=(4,), dtypes=("float32",), epoch_images=0)
    cases, skipped = suite.plan(settings)
    assert [case.label for case in cases] == [
        "jax matmul_peak", "numpy matmul_peak", "jax cnn train_step b4 float32"
    ]
    assert skipped == [{"framework": "torch", "reason": "torch is not installed"}]


def test_bench_command_rejects_an_epoch_smaller_than_its_batch(capsys):
    argv = ["bench", "--epoch-images", "100", "--epoch-batch-sizes", "4", "512"]
    assert cli.main(argv) == 2
    assert capsys.readouterr().err.strip() == (
        "jaxcifar bench: error: --epoch-images 100 is smaller than --epoch-batch-sizes 512: "
        "an epoch needs at least one full batch"
    )


@pytest.mark.parametrize("flag", [["--torch-compile"], ["--torch-threads", "2"]])
def test_bench_command_refuses_torch_flags_without_the_references(flag, monkeypatch, capsys):
    # --torch-threads was ignored without a word.
    monkeypatch.setattr(suite, "plan", lambda settings: pytest.fail("planned"))
    assert cli.main(["bench", *flag, "--no-reference"]) == 2
    assert capsys.readouterr().err == (
        f"jaxcifar bench: error: {flag[0]} sets up the PyTorch reference, which --no-reference "
        "turns off; drop one of them\n"
    )


@pytest.mark.parametrize("flag", [["--torch-compile"], ["--torch-threads", "1"]])
def test_bench_command_refuses_torch_flags_without_the_cnn(flag, monkeypatch, capsys):
    # --models mlp has no PyTorch reference: the flag ran no case, without a word.
    monkeypatch.setattr(suite, "plan", lambda settings: pytest.fail("planned"))
    assert cli.main(["bench", *flag, "--models", "mlp"]) == 2
    assert capsys.readouterr().err == (
        f"jaxcifar bench: error: {flag[0]} sets up the PyTorch reference of the CNN, which "
        f"--models mlp does not time; add cnn, or drop {flag[0]}\n"
    )


@pytest.mark.parametrize("flags, given", [
    (["--min-steps", "50"], "--min-steps"),
    (["--seconds-per-case", "5", "--min-steps", "9"], "--min-steps and --seconds-per-case"),
])  # fmt: skip
def test_bench_command_refuses_budget_flags_that_steps_overrides(flags, given, monkeypatch,
                                                                 capsys):  # fmt: skip
    # `--steps 2 --min-steps 50 --seconds-per-case 5` timed exactly 2 steps without a word.
    monkeypatch.setattr(suite, "plan", lambda settings: pytest.fail("planned"))
    assert cli.main(["bench", "--steps", "2", *flags]) == 2
    assert capsys.readouterr().err == (
        f"jaxcifar bench: error: --steps times exactly 2 steps a case; drop {given}, or --steps\n"
    )


def test_bench_command_refuses_epoch_batch_sizes_beside_no_epochs(monkeypatch, capsys):
    # `--epoch-images 0 --epoch-batch-sizes 8 16` timed no epoch without a word; the default
    # sizes given in another order passed for the default.
    monkeypatch.setattr(suite, "plan", lambda settings: pytest.fail("planned"))
    for sizes in (["8", "16"], ["512", "4"], ["4", "512"]):
        assert cli.main(["bench", "--epoch-images", "0", "--epoch-batch-sizes", *sizes]) == 2
        assert capsys.readouterr().err == (
            "jaxcifar bench: error: --epoch-batch-sizes sets the timed epochs, which "
            "--epoch-images 0 skips; drop one of them\n"
        )


@pytest.mark.parametrize("flags, message", [
    (["--batch-sizes", "4", "4"], "--batch-sizes: 4 given twice"),
    (["--dtypes", "float32", "bfloat16", "float32"], "--dtypes: float32 given twice"),
    (["--models", "mlp", "cnn", "mlp", "cnn"], "--models: cnn, mlp given twice"),
    (["--epoch-batch-sizes", "8", "8"], "--epoch-batch-sizes: 8 given twice"),
])  # fmt: skip
def test_bench_command_refuses_a_value_given_twice(flags, message, monkeypatch, capsys):
    # Each such case was timed twice, and one float32 row got "vs f32 x1.00" against the other.
    monkeypatch.setattr(suite, "plan", lambda settings: pytest.fail("planned"))
    assert cli.main(["bench", *flags]) == 2
    assert capsys.readouterr().err == f"jaxcifar bench: error: {message}; name each once\n"


def test_bench_help_states_the_step_cap_of_a_timed_case(capsys, monkeypatch):
    # "time each case for at least this long": `--seconds-per-case 3` stopped at 500 steps,
    # 0.46 s of an MLP's.
    monkeypatch.setenv("COLUMNS", "1000")
    with pytest.raises(SystemExit):
        cli.main(["bench", "--help"])
    shown = capsys.readouterr().out
    assert "time each case for at least this long, up to 500 timed steps (or --min-steps, if " \
        "more)" in shown


@pytest.mark.parametrize("name", ["../../escape", "", ".hidden"])
def test_bench_command_takes_a_plain_file_stem_as_its_name(name, tmp_path, capsys):
    # Before: --out a/b --name ../../escape wrote escape.json beside a/, outside --out.
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["bench", "--out", str(tmp_path / "b"), "--name", name])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.startswith(
        f"jaxcifar bench: error: argument --name: expected a plain file name stem (not empty, "
        f"no '/', not starting with '.'), got {name!r}"
    )
    assert not any(tmp_path.iterdir())


def test_bench_command_writes_its_files_under_the_longest_name_it_takes(tmp_path, monkeypatch):
    # 250 bytes: NAME.json is a legal name, though its temporary's would be too long uncut.
    _fake_run(monkeypatch)
    name = "é" * 125
    assert cli.main(["bench", "--out", str(tmp_path), "--name", name]) == 0
    assert sorted(path.name for path in tmp_path.iterdir()) == [f"{name}.json", f"{name}.md"]


def test_bench_command_checks_its_out_folder_before_any_case(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(suite, "plan", lambda settings: pytest.fail("planned"))
    (tmp_path / "file").write_text("")
    out = tmp_path / "file" / "bench"
    assert cli.main(["bench", "--out", str(out)]) == 2
    assert capsys.readouterr().err == (
        f"jaxcifar bench: error: --out {out}: cannot write there (Not a directory)\n"
    )


def _fake_run(monkeypatch) -> None:
    """`jaxcifar bench` measures one fake case (a 2 ms step) and draws no plot."""
    cases = [suite.Case("jax cnn train_step b4 float32", lambda: _row("jax", median=0.002))]
    monkeypatch.setattr(suite, "plan", lambda settings: (cases, []))
    monkeypatch.setattr(output, "plot_step_times", lambda *args, **kwargs: None)


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(
    "terminal, flags, bar", [(False, [], False), (True, [], True), (True, ["--quiet"], False)]
)
def test_bench_progress_bar_only_on_a_terminal_and_without_quiet(
    terminal, flags, bar, tmp_path, monkeypatch
):
    _fake_run(monkeypatch)
    stderr = _Terminal() if terminal else io.StringIO()
    monkeypatch.setattr(sys, "stderr", stderr)
    assert cli.main(["bench", "--out", str(tmp_path), "--name", "run", *flags]) == 0
    lines = stderr.getvalue()
    assert "jax cnn train_step b4 float32: median 2.000 ms" in lines  # the case lines stay
    assert ("bench: 100%" in lines) == bar


def test_bench_command_saves_the_rows_so_far_after_every_case(tmp_path, monkeypatch, capsys):
    def stopped():
        raise Interrupted(signal.SIGINT)  # Ctrl-C, or a time limit, during the second case

    cases = [suite.Case("jax cnn train_step b4 float32", lambda: _row("jax", median=0.002)),
             suite.Case("torch cnn train_step b4 float32", stopped)]  # fmt: skip
    monkeypatch.setattr(suite, "plan", lambda settings: (cases, []))
    assert cli.main(["bench", "--out", str(tmp_path), "--name", "partial"]) == 130
    saved = json.loads((tmp_path / "partial.json").read_text())
    assert [(row["framework"], row["step_seconds"]["median"]) for row in saved["rows"]] == [
        ("jax", 0.002)
    ]
    assert "| jax | cnn | train_step | 4 |" in (tmp_path / "partial.md").read_text()
    assert not (tmp_path / "partial.png").exists()  # the plot waits for the whole run


def _stopped_in_case(monkeypatch, stop: int, planned: int) -> None:
    """`jaxcifar bench` plans `planned` fake cases (2 ms steps at batch sizes 1, 2, 4, ...) and
    is stopped by Ctrl-C in case number `stop` (from 1; past `planned`: never), drawing each
    plot as a file holding b"plot"."""

    def measure(number: int) -> Row:
        if number == stop:
            raise Interrupted(signal.SIGINT)
        return _row("jax", median=0.002, batch_size=2 ** (number - 1))

    cases = [suite.Case(f"jax cnn train_step b{2 ** (n - 1)} float32", lambda n=n: measure(n))
             for n in range(1, planned + 1)]  # fmt: skip
    monkeypatch.setattr(suite, "plan", lambda settings: (cases, []))
    monkeypatch.setattr(output, "plot_step_times", lambda path, *a, **k: path.write_bytes(b"plot"))


def test_an_interrupted_bench_marks_its_json_and_markdown_as_k_of_n_cases(
    tmp_path, monkeypatch, capsys
):
    # Before: the files of 2 of 5 cases read as a whole run's, "whole run: 0 s".
    _stopped_in_case(monkeypatch, stop=3, planned=5)
    assert cli.main(["bench", "--out", str(tmp_path), "--name", "b1"]) == 130
    saved = json.loads((tmp_path / "b1.json").read_text())
    assert saved["cases"] == {"done": 2, "planned": 5} and len(saved["rows"]) == 2
    markdown = (tmp_path / "b1.md").read_text().splitlines()
    assert any(line.startswith("- 2 of 5 cases (interrupted), in ") for line in markdown)
    assert not any(line.startswith("- whole run") for line in markdown)


def test_a_whole_bench_run_marks_its_json_and_markdown_complete(tmp_path, monkeypatch, capsys):
    _stopped_in_case(monkeypatch, stop=0, planned=3)
    assert cli.main(["bench", "--out", str(tmp_path), "--name", "b1"]) == 0
    assert json.loads((tmp_path / "b1.json").read_text())["cases"] == {"done": 3, "planned": 3}
    markdown = (tmp_path / "b1.md").read_text()
    assert "\n- whole run: " in markdown and "interrupted" not in markdown


def test_an_interrupted_bench_removes_the_plot_of_an_earlier_run_of_its_name(
    tmp_path, monkeypatch, capsys
):
    # Before: b1.png still plotted the earlier run's 3 rows beside the new b1.json's 1.
    _stopped_in_case(monkeypatch, stop=0, planned=3)
    assert cli.main(["bench", "--out", str(tmp_path), "--name", "b1"]) == 0
    assert (tmp_path / "b1.png").read_bytes() == b"plot"
    _stopped_in_case(monkeypatch, stop=2, planned=3)
    assert cli.main(["bench", "--out", str(tmp_path), "--name", "b1"]) == 130
    assert sorted(path.name for path in tmp_path.iterdir()) == ["b1.json", "b1.md"]
    assert json.loads((tmp_path / "b1.json").read_text())["cases"] == {"done": 1, "planned": 3}


def test_a_signal_while_bench_saves_a_case_waits_for_its_json_and_markdown(
    tmp_path, monkeypatch, capsys
):
    # SIGTERM between the two files of a case's save: its .json held the case, its .md did not
    # (or an earlier run's), and the line said "nothing was written".
    _stopped_in_case(monkeypatch, stop=0, planned=3)
    write_text = atomic.atomic_write_text

    def signalled_after_the_json(path, text):
        write_text(path, text)
        if str(path).endswith(".json"):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.1)  # where the signal would land

    monkeypatch.setattr(atomic, "atomic_write_text", signalled_after_the_json)
    assert cli.main(["bench", "--out", str(tmp_path), "--name", "b1"]) == 143
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"jaxcifar bench: interrupted by SIGTERM after 1 of 3 cases; their results are in "
        f"{tmp_path / 'b1'}.json and .md"
    )
    assert json.loads((tmp_path / "b1.json").read_text())["cases"]["done"] == 1
    assert "- 1 of 3 cases (interrupted), in " in (tmp_path / "b1.md").read_text()


def test_an_interrupted_bench_says_how_many_cases_ran_and_where_their_results_are(
    tmp_path, monkeypatch, capsys
):
    # Before: "jaxcifar bench: interrupted", whether the files held 0, some or all rows.
    _stopped_in_case(monkeypatch, stop=3, planned=5)
    assert cli.main(["bench", "--out", str(tmp_path), "--name", "b1"]) == 130
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"jaxcifar bench: interrupted by SIGINT after 2 of 5 cases; their results are in "
        f"{tmp_path / 'b1'}.json and .md"
    )
    _stopped_in_case(monkeypatch, stop=1, planned=5)
    assert cli.main(["bench", "--out", str(tmp_path / "new"), "--name", "b1"]) == 130
    assert capsys.readouterr().err == (
        "jaxcifar bench: interrupted by SIGINT after 0 of 5 cases; nothing was written\n"
    )
    assert not (tmp_path / "new").exists()


def test_bench_without_a_name_never_overwrites_earlier_results(tmp_path, monkeypatch, capsys):
    # Before: the default stem <device>-<date> was rewritten by the day's second run, and with
    # the default --out from the repository root, committed results of the same name.
    _fake_run(monkeypatch)
    base = f"{environment.device_slug(environment.device_name())}-{datetime.date.today()}"
    assert cli.main(["bench", "--out", str(tmp_path)]) == 0
    first = capsys.readouterr()
    assert first.out.split() == [str(tmp_path / f"{base}.{ext}") for ext in ("json", "md", "png")]
    assert "already holds" not in first.err  # a fresh folder: the plain stem
    earlier = (tmp_path / f"{base}.json").read_bytes()
    for number in (2, 3):
        assert cli.main(["bench", "--out", str(tmp_path)]) == 0
        again = capsys.readouterr()
        assert again.out.split()[0] == str(tmp_path / f"{base}-{number}.json")
        assert (f"jaxcifar bench: note: {tmp_path} already holds {base}'s results; writing "
                f"{base}-{number}.* ") in again.err  # fmt: skip
    assert (tmp_path / f"{base}.json").read_bytes() == earlier
    # An explicit --name is the user's to overwrite.
    assert cli.main(["bench", "--out", str(tmp_path), "--name", base]) == 0
    assert capsys.readouterr().out.split()[0] == str(tmp_path / f"{base}.json")
    assert (tmp_path / f"{base}.json").read_bytes() != earlier
    assert not (tmp_path / f"{base}-4.json").exists()


def test_free_stem_skips_a_stem_any_of_whose_files_exist(tmp_path):
    assert output.free_stem(tmp_path / "new", "cpu-2026-11-30") == "cpu-2026-11-30"
    (tmp_path / "cpu-2026-11-30.png").write_bytes(b"")  # one file of a run takes its stem
    assert output.free_stem(tmp_path, "cpu-2026-11-30") == "cpu-2026-11-30-2"


def test_case_lines_give_the_matmul_roof_in_gflops_and_steps_in_images_per_second():
    # Before: "jax matmul_peak: ... 109554 images/s", a rate that means nothing for a GEMM.
    roof = _row("jax", case="matmul_peak", median=0.01, flops_per_step=2e9)
    assert output.case_line("jax matmul_peak", roof, 1.5) == (
        "jax matmul_peak: median 10.000 ms, 200 GFLOP/s [1.5 s]"
    )
    step = _row("jax", median=0.002, flops_per_step=1e6)
    assert output.case_line("jax cnn train_step b4 float32", step, 0.5) == (
        "jax cnn train_step b4 float32: median 2.000 ms, 2000 images/s [0.5 s]"
    )
    assert output.case_line("torch-compile cnn train_step b4", None, 3.0) == (
        "torch-compile cnn train_step b4: skipped (see the results file)"
    )


ROW_KEYS = {
    "framework", "model", "case", "batch_size", "dtype", "input_shape", "compile_seconds",
    "lower_seconds", "first_run_seconds", "step_seconds", "steps_timed", "images_per_second",
    "flops_per_step", "flops_per_second", "peak_memory_bytes", "epoch_seconds", "steps_per_epoch",
    "jax_speedup", "speedup_vs_float32", "speedup_vs_loop", "speedup_bound", "notes",
}  # fmt: skip


def test_bench_command_writes_json_markdown_and_plot(tmp_path, capsys):
    argv = [
        "bench", "--models", "mlp", "--batch-sizes", "4", "--dtypes", "float32", "--steps", "2",
        "--epoch-images", "16", "--epoch-batch-sizes", "8", "--out", str(tmp_path), "--name", "run",
    ]  # fmt: skip
    assert cli.main(argv) == 0
    written = [str(tmp_path / f"run.{ext}") for ext in ("json", "md", "png")]
    assert capsys.readouterr().out.split() == written
    results = json.loads((tmp_path / "run.json").read_text())
    environment_keys = {
        "date", "device_kind", "cpu_count", "usable_cpus", "cpu_flags", "xla_flags",
        "glibc_tunables", "versions",
    }  # fmt: skip
    assert environment_keys <= results["environment"].keys()
    assert {"jax", "jaxlib", "numpy", "torch"} <= results["environment"]["versions"].keys()
    rows = results["rows"]
    assert [(r["framework"], r["case"], r["batch_size"]) for r in rows] == [
        ("jax", "matmul_peak", 1024), ("numpy", "matmul_peak", 1024),
        ("jax", "train_step", 4), ("jax", "scratch_step", 4), ("numpy", "scratch_step", 4),
        ("jax", "epoch_loop", 8), ("jax", "epoch_scan", 8),
    ]  # fmt: skip
    for row in rows:
        assert row.keys() == ROW_KEYS
        assert row["step_seconds"].keys() == {"median", "p10", "p90"}
        median = row["step_seconds"]["median"]
        assert row["images_per_second"] == pytest.approx(row["batch_size"] / median)
    jax_roof, numpy_roof, train_step, jax_twin, numpy_step, loop, scan = rows
    assert jax_roof["flops_per_step"] == numpy_roof["flops_per_step"] == 2 * 1024**3
    roof = max(jax_roof["flops_per_second"], numpy_roof["flops_per_second"])
    for step in (train_step, jax_twin, numpy_step):
        assert step["speedup_bound"] == pytest.approx(roof / step["flops_per_second"])
    assert jax_roof["speedup_bound"] is None and scan["speedup_bound"] is None
    # NumPy's count leaves out the activations' elementwise work that XLA's count includes.
    assert numpy_step["flops_per_step"] == pytest.approx(jax_twin["flops_per_step"], rel=0.01)
    assert train_step["steps_timed"] == 2 and train_step["input_shape"] == [28, 28, 1]
    assert train_step["flops_per_step"] > 2 * 4 * (784 * 500 + 500 * 50 + 50 * 10)
    assert numpy_step["jax_speedup"] == pytest.approx(
        numpy_step["step_seconds"]["median"] / jax_twin["step_seconds"]["median"]
    )
    assert scan["steps_per_epoch"] == 2
    assert scan["speedup_vs_loop"] == pytest.approx(loop["epoch_seconds"] / scan["epoch_seconds"])
    # Two (1024, 1024) float32 operands and the product; each compiled step its own size.
    assert jax_roof["peak_memory_bytes"] >= 3 * 1024**2 * 4
    assert 0 < jax_twin["peak_memory_bytes"] < train_step["peak_memory_bytes"] < 3 * 1024**2 * 4
    assert numpy_step["peak_memory_bytes"] is None
    markdown = (tmp_path / "run.md").read_text()
    assert "| numpy | mlp | scratch_step | 4 | float32 |" in markdown
    twin_line = next(
        line for line in markdown.splitlines() if "| jax | mlp | scratch_step |" in line
    )
    assert f"| {jax_twin['peak_memory_bytes'] / 2**20:.3g} |" in twin_line  # the MiB column
    assert "| mlp | scan | 8 | 2 |" in markdown
    assert "Matmul roof (float32 GEMM): jax " in markdown and "GFLOP/s (1024x1024)" in markdown
    assert (tmp_path / "run.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_epoch_time_is_a_warm_epochs_with_every_compile_apart(monkeypatch):
    # On a fake clock: every compile takes 0.5 s, and an epoch's own work (moving its one
    # block of 4 batches to the device) 0.25 s. The runner compiles its epoch order when
    # built (made 1 s slower here), and the loop's step in the first epoch, which is untimed:
    # the timed epoch is the second, all of its programs compiled and run once before.
    now = _fake_clock(monkeypatch, compiling, jax_cases)

    def advance(seconds, then):
        now[0] += seconds
        return then()

    compile_program, shard_batch = compiling.compile_program, parallel.shard_batch
    monkeypatch.setattr(
        compiling, "compile_program",
        lambda low, *options: advance(0.5, lambda: compile_program(low, *options)),
    )
    shipped = []
    monkeypatch.setattr(
        parallel, "shard_batch",
        lambda *a, **k: advance(0.25, lambda: shipped.append(1) or shard_batch(*a, **k)),
    )  # fmt: skip
    real_order_fn = epochs._epoch_order_fn

    class SlowToCompile:
        def __init__(self, jitted):
            self.jitted = jitted

        def lower(self, *args):
            lowered = self.jitted.lower(*args)
            return types.SimpleNamespace(
                as_text=lowered.as_text,
                compile=lambda **options: advance(1.0, lambda: lowered.compile(**options)),
            )

    monkeypatch.setattr(
        epochs, "_epoch_order_fn", lambda mesh, size: SlowToCompile(real_order_fn(mesh, size))
    )
    row = jax_cases.measure_epoch("mlp", 4, "loop", 16)
    assert row.steps_per_epoch == 4
    assert row.compile_seconds == 1.5 + 0.5  # the epoch order's and the loop step's
    assert row.epoch_seconds == 0.25
    assert len(shipped) == 2  # two epochs ran
    assert row.step_seconds == {"median": 0.0625, "p10": 0.0625, "p90": 0.0625}


def test_kernel_counts_read_a_step_and_the_body_of_its_scan():
    def step(carry, _):
        return jnp.sin(carry) @ carry, None

    def epoch(x):
        # A small loop first: the counted body must be the largest one, not the first.
        x = jax.lax.fori_loop(0, 2, lambda i, x: x + 1.0, x)
        return jax.lax.scan(step, x, None, length=3)[0]

    x = jnp.ones((4, 4))
    body = kernel_counts(jax.jit(epoch).lower(x).compile().as_text(), loop_body=True)
    assert body["dot"] == 1 and "while" not in body
    entry = kernel_counts(jax.jit(lambda x: step(x, None)[0]).lower(x).compile().as_text())
    assert entry["dot"] == 1 and "parameter" not in entry and "while" not in entry
    with pytest.raises(ValueError, match="no while loop"):
        kernel_counts(jax.jit(jnp.sin).lower(x).compile().as_text(), loop_body=True)


def test_loop_trip_count_is_what_xla_proved_for_the_step_loop():
    def epoch(x, n):
        # A short fixed loop first: the step loop is the larger one, whose count is proved.
        x = jax.lax.fori_loop(0, 2, lambda i, x: x + 1.0, x)
        return jax.lax.scan(lambda x, _: (jnp.sin(x) @ x, None), x, None, length=n)[0]

    x = jnp.ones((4, 4))
    for n in (3, 125):
        hlo = jax.jit(epoch, static_argnums=1).lower(x, n).compile().as_text()
        assert loop_trip_count(hlo) == n
    # A loop that runs until its data says stop has no count to prove.
    until = jax.jit(lambda x: jax.lax.while_loop(lambda x: x.sum() < 100.0, jnp.exp, x))
    assert loop_trip_count(until.lower(x).compile().as_text()) is None
    with pytest.raises(ValueError, match="no while loop"):
        loop_trip_count(jax.jit(jnp.sin).lower(x).compile().as_text())


# The shape of a GPU program whose loop body XLA put into a command buffer (a `call` of a
# computation that CUDA-graphs its kernels): the kernels inside still each launch.
COMMAND_BUFFER_HLO = """\
HloModule epoch

%fused_sin (p: f32[4]) -> f32[4] {
  %p = f32[4]{0} parameter(0)
  ROOT %sine = f32[4]{0} sine(%p)
}

%command_buffer (a: f32[4]) -> f32[4] {
  %a = f32[4]{0} parameter(0)
  %fusion = f32[4]{0} fusion(%a), kind=kLoop, calls=%fused_sin
  ROOT %fusion.1 = f32[4]{0} fusion(%fusion), kind=kLoop, calls=%fused_sin
}

%body (t: (s32[], f32[4])) -> (s32[], f32[4]) {
  %t = (s32[], f32[4]{0}) parameter(0)
  %x = f32[4]{0} get-tuple-element(%t), index=1
  %call = f32[4]{0} call(%x), to_apply=%command_buffer
  %conv = f32[4]{0} custom-call(%call), custom_call_target="__cudnn$convForward"
  %i = s32[] get-tuple-element(%t), index=0
  %copy = s32[] copy(%i)
  ROOT %tuple = (s32[], f32[4]{0}) tuple(%copy, %conv)
}

%cond (t.1: (s32[], f32[4])) -> pred[] {
  %t.1 = (s32[], f32[4]{0}) parameter(0)
  ROOT %c = pred[] constant(true)
}

%outer_command_buffer (b: (s32[], f32[4])) -> (s32[], f32[4]) {
  %b = (s32[], f32[4]{0}) parameter(0)
  ROOT %while = (s32[], f32[4]{0}) while(%b), condition=%cond, body=%body
}

ENTRY %main (y: (s32[], f32[4])) -> (s32[], f32[4]) {
  %y = (s32[], f32[4]{0}) parameter(0)
  ROOT %call.1 = (s32[], f32[4]{0}) call(%y), to_apply=%outer_command_buffer
}
"""


def test_kernel_counts_see_through_command_buffer_calls():
    body = {"fusion": 2, "custom-call": 1, "copy": 1}
    assert kernel_counts(COMMAND_BUFFER_HLO, loop_body=True) == body
    by_kind = {"fusion kLoop": 2, "custom-call __cudnn$convForward": 1, "copy": 1}
    assert kernel_counts(COMMAND_BUFFER_HLO, loop_body=True, by_kind=True) == by_kind
    assert kernel_counts(COMMAND_BUFFER_HLO) == {"while": 1}


# A step that gathers a batch of 4 rows from a dataset of 1,000, computes a loss on it and
# records the loss in place in a buffer of 100: its kernels read and write 576 bytes.
KERNEL_BYTES_HLO = """\
HloModule step

%fused_batch (data: u8[1000,8], index: s32[4,1]) -> f32[4,8] {
  %data = u8[1000,8]{1,0} parameter(0)
  %float = f32[1000,8]{1,0} convert(%data)
  %index = s32[4,1]{1,0} parameter(1)
  ROOT %rows = f32[4,8]{1,0} gather(%float, %index), offset_dims={1}, slice_sizes={1,8}
}

%fused_record (losses: f32[100], loss: f32[1], at: s32[]) -> f32[100] {
  %losses = f32[100]{0} parameter(0)
  %loss = f32[1]{0} parameter(1)
  %at = s32[] parameter(2)
  ROOT %update = f32[100]{0} dynamic-update-slice(%losses, %loss, %at)
}

ENTRY %main (d: u8[1000,8], i: s32[4,1], l: f32[100], a: s32[]) -> (f32[100], f32[4,8]) {
  %data = u8[1000,8]{1,0} parameter(0)
  %index = s32[4,1]{1,0} parameter(1)
  %losses = f32[100]{0} parameter(2)
  %at = s32[] parameter(3)
  %batch = f32[4,8]{1,0} fusion(%data, %index), kind=kLoop, calls=%fused_batch
  %loss = f32[1]{0} custom-call(%batch), custom_call_target="loss"
  %record = f32[100]{0} fusion(%losses, %loss, %at), kind=kLoop, calls=%fused_record
  %copy = f32[4,8]{1,0} copy(%batch)
  ROOT %tuple = (f32[100]{0}, f32[4,8]{1,0}) tuple(%record, %copy)
}
"""


def test_kernel_bytes_count_what_each_kernel_reads_and_writes():
    gather = 4 * 8 + 4 * 4 + 4 * 8 * 4  # the 4 rows' bytes (not the set's), indices, result
    loss = 4 * 8 * 4 + 4
    record = 4 + 4 + 4  # the loss read and written into its slot, the index; not the buffer
    copy = 2 * 4 * 8 * 4
    assert kernel_bytes(KERNEL_BYTES_HLO) == gather + loss + record + copy
    # Inside command buffers (calls) and loops as kernel_counts reads them.
    assert kernel_bytes(COMMAND_BUFFER_HLO, loop_body=True) == 2 * 32 + 32 + 8
    assert kernel_bytes(COMMAND_BUFFER_HLO) == 0
    # A compiled program: sin reads its 1,000 floats and writes as many.
    x = jnp.ones(1000)
    assert kernel_bytes(jax.jit(jnp.sin).lower(x).compile().as_text()) == 8000


# In-place updates only where XLA makes them: into a buffer that is a parameter (through a
# bitcast) which the fusion otherwise only slices (a scatter-add reads its slot); a buffer
# the fusion builds itself is written whole. A cuDNN call's scratch (its u8 result) is no
# data.
UPDATES_HLO = """\
HloModule updates

%fused_in_place (buffer: f32[100], value: f32[1], at: s32[]) -> f32[10,10] {
  %buffer = f32[100]{0} parameter(0)
  %square = f32[10,10]{1,0} bitcast(%buffer)
  %value = f32[1]{0} parameter(1)
  %row = f32[1,1]{1,0} bitcast(%value)
  %at = s32[] parameter(2)
  ROOT %update = f32[10,10]{1,0} dynamic-update-slice(%square, %row, %at, %at)
}

%fused_scatter (buffer: f32[100], value: f32[1], at: s32[]) -> f32[100] {
  %buffer = f32[100]{0} parameter(0)
  %at = s32[] parameter(2)
  %old = f32[1]{0} dynamic-slice(%buffer, %at), dynamic_slice_sizes={1}
  %value = f32[1]{0} parameter(1)
  %sum = f32[1]{0} add(%old, %value)
  ROOT %update = f32[100]{0} dynamic-update-slice(%buffer, %sum, %at)
}

%fused_built (value: f32[1], at: s32[]) -> f32[100] {
  %zero = f32[] constant(0)
  %zeros = f32[100]{0} broadcast(%zero), dimensions={}
  %value = f32[1]{0} parameter(0)
  %at = s32[] parameter(1)
  ROOT %update = f32[100]{0} dynamic-update-slice(%zeros, %value, %at)
}

ENTRY %main (b: f32[100], v: f32[1], a: s32[], x: f32[8]) -> (f32[10,10], f32[100], f32[8]) {
  %b = f32[100]{0} parameter(0)
  %v = f32[1]{0} parameter(1)
  %a = s32[] parameter(2)
  %x = f32[8]{0} parameter(3)
  %in_place = f32[10,10]{1,0} fusion(%b, %v, %a), kind=kLoop, calls=%fused_in_place
  %scatter = f32[100]{0} fusion(%b, %v, %a), kind=kLoop, calls=%fused_scatter
  %built = f32[100]{0} fusion(%v, %a), kind=kLoop, calls=%fused_built
  %conv = (f32[8]{0}, u8[4096]{0}) custom-call(%x), custom_call_target="__cudnn$convForward"
  %y = f32[8]{0} get-tuple-element(%conv), index=0
  ROOT %tuple = (f32[10,10]{1,0}, f32[100]{0}, f32[8]{0}) tuple(%in_place, %built, %y)
}
"""


def test_kernel_bytes_count_in_place_updates_and_scratch_only_where_they_are():
    in_place = 4 + 4 + 4  # the value read and written, the index read; not the buffer
    scatter = 4 + 4 + 4 + 4  # the same and the slot it adds to, read in place
    built = 400 + 4 + 4  # the whole buffer written
    convolution = 32 + 32  # its input and output, not its 4,096 bytes of scratch
    assert kernel_bytes(UPDATES_HLO) == in_place + scatter + built + convolution


# A fusion that slices two rows of a 100-row operand (each counts), one whose two 60-row
# windows overlap (the operand counts once, whole), a bfloat16 result, and a call with a
# tuple of two results.
SLICES_HLO = """\
HloModule slices

%fused_rows (data: f32[100,8], at: s32[]) -> bf16[2,8] {
  %data = f32[100,8]{1,0} parameter(0)
  %at = s32[] parameter(1)
  %zero = s32[] constant(0)
  %first = f32[1,8]{1,0} dynamic-slice(%data, %at, %zero), dynamic_slice_sizes={1,8}
  %second = f32[1,8]{1,0} dynamic-slice(%data, %zero, %zero), dynamic_slice_sizes={1,8}
  %both = f32[2,8]{1,0} concatenate(%first, %second), dimensions={0}
  ROOT %half = bf16[2,8]{1,0} convert(%both)
}

%fused_windows (data: f32[100,8], at: s32[]) -> f32[60,8] {
  %data = f32[100,8]{1,0} parameter(0)
  %at = s32[] parameter(1)
  %zero = s32[] constant(0)
  %low = f32[60,8]{1,0} dynamic-slice(%data, %zero, %zero), dynamic_slice_sizes={60,8}
  %high = f32[60,8]{1,0} dynamic-slice(%data, %at, %zero), dynamic_slice_sizes={60,8}
  ROOT %sum = f32[60,8]{1,0} add(%low, %high)
}

ENTRY %main (d: f32[100,8], a: s32[]) -> (bf16[2,8], f32[60,8], (f32[4], f32[8])) {
  %d = f32[100,8]{1,0} parameter(0)
  %a = s32[] parameter(1)
  %rows = bf16[2,8]{1,0} fusion(%d, %a), kind=kLoop, calls=%fused_rows
  %windows = f32[60,8]{1,0} fusion(%d, %a), kind=kLoop, calls=%fused_windows
  %pair = (f32[4]{0}, f32[8]{0}) custom-call(%a), custom_call_target="split"
  ROOT %t = (bf16[2,8]{1,0}, f32[60,8]{1,0}, (f32[4]{0}, f32[8]{0})) tuple(%rows, %windows, %pair)
}
"""


def test_kernel_bytes_count_every_slice_an_operand_once_at_most_and_each_result():
    rows = 2 * 8 * 4 + 4 + 2 * 8 * 2  # both rows read, the index; written in bfloat16
    windows = 100 * 8 * 4 + 4 + 60 * 8 * 4  # 120 rows of windows: the 100 there are, once
    pair = 4 + 4 * 4 + 8 * 4  # the index read, both results written
    assert kernel_bytes(SLICES_HLO) == rows + windows + pair


def test_flops_are_none_where_xla_counts_none():
    def executable(analysis):
        return types.SimpleNamespace(cost_analysis=lambda: analysis)

    assert flops(executable([{"flops": 6.0}])) == 6.0  # older JAX: a list of one dict
    for analysis in (None, [], {}, {"flops": -1.0}):  # a negative count means none
        assert flops(executable(analysis)) is None, analysis


# Thunk sequences as XLA:GPU dumps them (xla_dump_to), cut to their loops: the epoch's loop
# body one command buffer (the host launches it each iteration), the whole loop inside one,
# and a body whose convolutions stay out of the graphs.
BODY_GRAPH = """\
000: kCommandBuffer [source       | next=044 (1)]
    001: kCopy         [source       | sink        ] kCopy
044: kWhile         [prev=000 (1) | sink        ]
condition:
    045: kCustomKernel [source | sink] loop_compare_fusion grid: [1, 1, 1]
  body:
    000: kCommandBuffer [source | sink]
        046: kCustomKernel [source       | next=047 (1)] conv_relu_pool grid: [64, 1, 1]
        047: kCustomKernel [prev=046 (1) | sink        ] loop_add_fusion grid: [1, 1, 1]
"""
WHOLE_LOOP = """\
000: kCommandBuffer [source | sink]
    001: kCopy         [source       | next=044 (43)] kCopy
    044: kWhile        [prev=043 (1) | sink         ]
condition:
        045: kCustomKernel [source | sink] loop_compare_fusion grid: [1, 1, 1]
      body:
        046: kCustomKernel [source       | next=047 (1)] conv_relu_pool grid: [64, 1, 1]
"""
SPLIT_BODY = """\
048: kWhile         [prev=000 (1) | next=072 (1)]
condition:
    049: kCustomKernel [source | sink] loop_compare_fusion grid: [1, 1, 1]
  body:
    050: kDynamicSliceFusion [source       | next=052 (1)] params=1, results=1
        051: kCopy [source | sink] kCopy
    054: kConvolution        [prev=053 (1) | next=000 (1)] kConvolution
    000: kCommandBuffer      [prev=054 (1) | next=064 (1)]
        057: kCustomKernel [source       | sink        ] head_train_step grid: [1, 1, 1]
    064: kConvolution        [prev=000 (1) | sink        ] kConvolution
072: kCustomKernel  [prev=048 (1) | sink        ] input_transpose_fusion_3 grid: [1, 1, 1]
"""


# A step loop with a loop of its own inside (XLA writes every "condition:" label unindented),
# and a small loop before the step loop, as XLA dumped them.
NESTED = """\
001: kCopy  [source       | next=003 (2)] kCopy
003: kWhile [prev=002 (1) | sink        ]
condition:
    004: kCustomKernel [source | sink] loop_compare_fusion_1 grid: [1, 1, 1]
  body:
    005: kCustomKernel [source       | sink        ] loop_add_fusion_2 grid: [1, 1, 1]
    006: kCopy         [source       | next=007 (1)] kCopy
    007: kWhile        [prev=006 (1) | next=011 (1)]
condition:
        008: kCustomKernel [source       | next=009 (1)] input_reduce_fusion grid: [1, 1, 1]
        009: kCustomKernel [prev=008 (1) | sink        ] loop_compare_fusion grid: [1, 1, 1]
      body:
        010: kCustomKernel [source | sink] loop_add_fusion grid: [32, 1, 1]
    011: kCustomKernel [prev=007 (1) | next=012 (1)] gemm_fusion_dot_general_0 grid: [32, 1, 1]
    000: kCommandBuffer [prev=011 (1) | sink]
        012: kCustomKernel [source | sink] loop_add_fusion_1 grid: [32, 1, 1]
"""
TWO_LOOPS = """\
003: kWhile [prev=002 (1) | next=007 (1)]
condition:
    005: kCustomKernel [prev=004 (1) | sink        ] loop_compare_fusion grid: [1, 1, 1]
  body:
    006: kCustomKernel [source | sink] loop_add_fusion grid: [32, 1, 1]
007: kWhile [prev=003 (1) | sink        ]
condition:
    008: kCustomKernel [source | sink] loop_compare_fusion_1 grid: [1, 1, 1]
  body:
    009: kCustomKernel [source       | sink        ] loop_add_fusion_2 grid: [1, 1, 1]
    000: kCommandBuffer [source | sink]
        010: kCustomKernel [source       | next=011 (1)] gemm_fusion_dot_general_0 grid: [32, 1, 1]
        011: kCustomKernel [prev=010 (1) | sink        ] loop_add_fusion_1 grid: [32, 1, 1]
"""


def test_loop_command_buffers_read_the_step_loops_graphs_from_its_thunks():
    assert loop_command_buffers(BODY_GRAPH) == "loop body"
    assert loop_command_buffers(WHOLE_LOOP) == "whole loop"
    assert loop_command_buffers(SPLIT_BODY) == "1 graph + 3 thunks"
    # The outer loop's body: two kernels, a copy, the inner loop and a graph, to its end.
    assert loop_command_buffers(NESTED) == "1 graph + 4 thunks"
    # The step loop is the one with the larger body, not the first.
    assert loop_command_buffers(TWO_LOOPS) == "1 graph + 1 thunks"
    with pytest.raises(ValueError, match="runs no while loop"):
        loop_command_buffers("000: kCustomKernel [source | sink] fusion grid: [1, 1, 1]")



def test_cpu_flags_lists_the_vector_extensions_of_a_linux_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nmodel name\t: AMD EPYC\n"
        "flags\t\t: fpu sse2 avx avx2 fma avx512f avx512dq avx512_bf16 avx512_vnni\n\n"
        "processor\t: 1\nflags\t\t: fpu sse2 avx avx2 fma avx512f avx512dq avx512_bf16\n"
    )
    assert environment.cpu_flags(str(cpuinfo)) == ["avx2", "avx512f", "avx512_bf16"]
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx avx2\n")
    assert environment.cpu_flags(str(cpuinfo)) == ["avx2"]
    assert environment.cpu_flags(str(tmp_path / "missing")) is None


def test_a_slow_warmup_does_not_count_toward_min_seconds(monkeypatch):
    # Before: the clock started before the warm-up, whose 5 s used up the 2 s budget.
    now = _fake_clock(monkeypatch, timing)
    calls = []

    def step():  # the warm-up takes 5 s, each timed step 0.5 s
        now[0] += 5.0 if not calls else 0.5
        calls.append(1)

    seconds = time_steps(step, TimingBudget(warmup=1, min_steps=1, min_seconds=2.0))
    np.testing.assert_array_equal(seconds, [0.5] * 4)


@pytest.mark.parametrize(
    "fields", [{"warmup": -1}, {"min_steps": 5, "max_steps": 3}, {"min_seconds": -1.0}]
)
def test_timing_budget_refuses_each_bad_field(fields):
    with pytest.raises(ValueError, match="need warmup >= 0, 1 <= min_steps <= max_steps"):
        TimingBudget(**fields)


def _results(rows, skipped=()):
    """A results document as `suite.run` returns it, of `rows` (Row) and `skipped`."""
    environment = {
        "date": "2026-01-02", "platform": "cpu", "device_kind": "cpu", "cpu_count": 2,
        "usable_cpus": 2, "cpu_flags": ["avx2"], "load_average": [0.5], "xla_flags": "",
        "glibc_tunables": "", "thread_variables": {}, "versions": {"jax": "0.1"},
    }  # fmt: skip
    return {"environment": environment, "cases": {"done": 2, "planned": 2}, "total_seconds": 3.0,
            "skipped": list(skipped), "rows": [row.to_dict() for row in rows]}  # fmt: skip


STEP = Row("jax", "cnn", "train_step", 4, "float32", (32, 32, 3),
           {"median": 0.002, "p10": 0.0015, "p90": 0.003}, 7, compile_seconds=1.25,
           flops_per_step=4e6, peak_memory_bytes=2**21)  # fmt: skip
EPOCH = Row("jax", "mlp", "epoch_scan", 8, "float32", (28, 28, 1),
            {"median": 0.01, "p10": 0.01, "p90": 0.01}, 2, compile_seconds=1.5,
            epoch_seconds=0.02, steps_per_epoch=2)  # fmt: skip


STEP_LINE = (
    "| jax | cnn | train_step | 4 | float32 | 1.25 | 2 | 1.5 | 3 | 7 | 2000 | 0.004 | 2 | 2 |  |"
)


def test_step_table_gives_median_p10_and_p90_in_their_own_columns():
    assert STEP_LINE in output.render_markdown(_results([STEP])).splitlines()


def test_every_step_row_with_a_roof_shows_it_beside_its_comparison():
    # Only reference rows showed "roof xB": without torch, no row of the table did.
    import dataclasses

    jax_row = dataclasses.replace(STEP, speedup_bound=21.5)
    bf16 = dataclasses.replace(STEP, dtype="bfloat16", speedup_vs_float32=1.5, speedup_bound=9.0)
    torch_row = dataclasses.replace(STEP, framework="torch", jax_speedup=2.1, speedup_bound=40.0)
    cells = [line.rsplit("|", 2)[1].strip()
             for line in output.render_markdown(_results([jax_row, bf16, torch_row])).splitlines()
             if line.startswith(("| jax | cnn", "| torch | cnn"))]  # fmt: skip
    assert cells == ["roof x21.5", "vs f32 x1.50, roof x9.0", "jax x2.10, roof x40.0"]


def test_epoch_table_gives_epoch_seconds_apart_from_compile_seconds():
    lines = output.render_markdown(_results([EPOCH])).splitlines()
    assert "| mlp | scan | 8 | 2 | 1.5 | 0.02 | 10 | 800 |  |" in lines


def test_step_table_holds_no_epoch_rows():
    markdown = output.render_markdown(_results([STEP, EPOCH]))
    assert [line for line in markdown.splitlines() if line.startswith("| jax |")] == [STEP_LINE]
    assert "epoch_scan" not in markdown


def test_skipped_references_and_cases_are_listed_with_their_reasons():
    skipped = [{"framework": "torch", "reason": "torch is not installed"},
               {"framework": "jax", "case": "jax cnn train_step b4", "reason": "OOM"}]  # fmt: skip
    markdown = output.render_markdown(_results([STEP], skipped))
    assert markdown.endswith(
        "\n\nSkipped:\n\n- torch: torch is not installed\n- jax cnn train_step b4: OOM\n"
    )


def test_plot_error_bars_run_from_p10_to_p90(tmp_path, monkeypatch):
    # Before: yerr's low and high were swapped, drawing mirrored bars.
    from jaxcifar import plots

    figures = []
    monkeypatch.setattr(plots, "save_figure", lambda figure, path, dpi: figures.append(figure))
    output.plot_step_times(tmp_path / "plot.png", [STEP.to_dict()], title="cpu")
    (container,) = figures[0].axes[0].containers
    (bars,) = container.lines[2]
    np.testing.assert_allclose(bars.get_segments(), [[[4, 1.5], [4, 3.0]]])


def test_plot_lines_run_in_batch_size_order_whatever_the_rows_order(tmp_path, monkeypatch):
    # Rows in the order the cases ran (or a merge) drew a line back and forth across the axis.
    from jaxcifar import plots

    figures = []
    monkeypatch.setattr(plots, "save_figure", lambda figure, path, dpi: figures.append(figure))
    rows = [_row("jax", median=0.002, batch_size=64), _row("jax", median=0.001, batch_size=4)]
    output.plot_step_times(tmp_path / "plot.png", [row.to_dict() for row in rows], title="cpu")
    (container,) = figures[0].axes[0].containers
    line = container.lines[0]
    assert list(line.get_xdata()) == [4, 64]
    assert [float(y) for y in line.get_ydata()] == pytest.approx([1.0, 2.0])  # ms


def test_ratios_pair_rows_of_the_same_batch_size():
    # Guards a key without the batch size: b4's torch step against b8's JAX step.
    torch4, torch8 = _row("torch", median=3.0), _row("torch", median=4.0, batch_size=8)
    scan4 = _row("jax", "epoch_scan", epoch_seconds=2.0)
    scan8 = _row("jax", "epoch_scan", epoch_seconds=4.0, batch_size=8)
    add_ratios([
        _row("jax", median=1.0), _row("jax", median=2.0, batch_size=8), torch4, torch8,
        scan4, scan8, _row("jax", "epoch_loop", epoch_seconds=6.0),
        _row("jax", "epoch_loop", epoch_seconds=8.0, batch_size=8),
    ])  # fmt: skip
    assert (torch4.jax_speedup, torch8.jax_speedup) == (3.0, 2.0)
    assert (scan4.speedup_vs_loop, scan8.speedup_vs_loop) == (3.0, 2.0)


def test_only_a_torch_compile_failure_is_skipped_and_only_when_asked_for(monkeypatch):
    def measure(images, labels, budget, compile, threads):
        raise RuntimeError(f"compile={compile}")

    monkeypatch.setattr(torch_reference, "torch_missing", lambda: None)
    monkeypatch.setattr(torch_reference, "measure_torch_cnn", measure)
    asked = Settings(models=("cnn",), batch_sizes=(4,), dtypes=("float32",), epoch_images=0,
                     torch_compile=True, budget=TimingBudget.fixed(1))  # fmt: skip
    torch_cases = [case for case in suite.plan(asked)[0] if case.label.startswith("torch")]
    assert [case.label for case in torch_cases] == [
        "torch cnn train_step b4", "torch-compile cnn train_step b4"
    ]
    results = suite.run(asked, planned=(torch_cases[1:], []))
    assert results["skipped"] == [{"framework": "torch-compile",
                                   "case": "torch-compile cnn train_step b4",
                                   "reason": "RuntimeError: compile=True"}]  # fmt: skip
    # The plain torch step is a reference the run promises: its failure ends the run.
    with pytest.raises(RuntimeError, match="compile=False"):
        suite.run(asked, planned=(torch_cases[:1], []))
    # An MLP-only run times no torch at all, so it records no torch skip either.
    monkeypatch.setattr(torch_reference, "torch_missing", lambda: "torch is not installed")
    mlp = Settings(models=("mlp",), batch_sizes=(4,), dtypes=("float32",), epoch_images=0)
    assert suite.plan(mlp)[1] == []


def test_the_jax_roof_records_its_compile_time_under_xla_default_fusions(monkeypatch):
    from jaxcifar.bench import peak

    calls = []

    def recorded(*args, **kwargs):
        calls.append(kwargs)
        return compile_timed(*args, **kwargs)

    monkeypatch.setattr(peak, "compile_timed", recorded)
    monkeypatch.setattr(peak, "CPU_MATMUL_SIZE", 64)
    monkeypatch.setattr(peak, "GPU_MATMUL_SIZE", 64)
    row = peak.measure_jax_matmul(TimingBudget.fixed(2))
    # The roof is the matmul library's own rate, not the steps' CPU fusion options.
    assert calls == [{"xla_defaults": True}]
    assert row.compile_seconds > 0 and row.flops_per_step == 2 * 64**3


def test_bench_flags_reach_the_settings(tmp_path, monkeypatch, capsys):
    planned = []
    monkeypatch.setattr(suite, "plan", lambda settings: planned.append(settings) or ([], []))
    monkeypatch.setattr(output, "plot_step_times", lambda *args, **kwargs: None)
    out = ["--out", str(tmp_path), "--name", "run"]
    fixed = ["--steps", "3", "--warmup", "2", "--torch-threads", "2"]
    assert cli.main(["bench", *fixed, *out]) == 0
    assert planned[-1].budget == TimingBudget.fixed(3, warmup=2)
    assert planned[-1].torch_threads == 2 and planned[-1].reference is True
    assert cli.main(["bench", "--no-reference", *out]) == 0
    assert planned[-1].reference is False
    # More --min-steps than the default cap raises the cap rather than failing.
    timed = ["--min-steps", "600", "--seconds-per-case", "0.25", "--warmup", "0"]
    assert cli.main(["bench", *timed, *out]) == 0
    assert planned[-1].budget == TimingBudget(0, 600, 0.25, 600)
    assert planned[-1].reference is True


def test_environment_records_the_variables_and_cpus_the_run_had(monkeypatch):
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.hugetlb=1")
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_use_thunk_runtime=true")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setattr(environment.os, "sched_getaffinity", lambda pid: {0}, raising=False)
    described = environment.describe_environment()
    assert described["glibc_tunables"] == "glibc.malloc.hugetlb=1"
    assert described["xla_flags"] == "--xla_cpu_use_thunk_runtime=true"
    assert described["thread_variables"]["OMP_NUM_THREADS"] == "1"
    assert described["usable_cpus"] == 1  # pinned to one CPU of cpu_count


def test_device_slug_is_lowercase_words_joined_by_single_dashes():
    assert environment.device_slug("NVIDIA H200") == "nvidia-h200"
    assert environment.device_slug(" Tesla V100-SXM2 (16GB) ") == "tesla-v100-sxm2-16gb"
    assert environment.device_slug("???") == "device"


def _cells(step) -> dict:
    """The variables a timed step closure reads and rebinds, by name."""
    return dict(zip(step.__code__.co_freevars, step.__closure__))


def _capture_steps(monkeypatch, *modules) -> list:
    """Make each module's time_steps keep the step it was given instead of timing it."""
    steps = []

    def keep(step, budget):
        steps.append(step)
        return np.ones(1)

    for module in modules:
        monkeypatch.setattr(module, "time_steps", keep)
    return steps


def test_numpy_scratch_step_and_its_jax_twin_take_the_same_float32_sgd_step(monkeypatch):
    # Guards a twin with another loss, output activation or rate, and a NumPy step that does
    # not update its weights: the two rows would then time different work.
    steps = _capture_steps(monkeypatch, jax_cases, numpy_reference)
    data = jax_cases.synthetic_dataset("mlp", 4)
    numpy_reference.measure_scratch_step(data.images, data.labels, TimingBudget.fixed(1))
    jax_cases.measure_scratch_twin(data.images, data.labels, TimingBudget.fixed(1))
    numpy_cells, twin_cells = map(_cells, steps)
    network = numpy_cells["network"].cell_contents
    assert all(layer[k].dtype == np.float32 for layer in network for k in ("weights", "bias"))
    params = twin_cells["params"].cell_contents
    start = [
        {"weights": np.asarray(params[f"dense{i}"]["kernel"]),
         "bias": np.asarray(params[f"dense{i}"]["bias"])}
        for i in range(1, len(params) + 1)
    ]  # fmt: skip
    numpy_cells["network"].cell_contents = start  # both steps from the twin's weights
    steps[0]()
    steps[1]()
    stepped = numpy_cells["network"].cell_contents
    twin = twin_cells["params"].cell_contents
    for i, (before, after) in enumerate(zip(start, stepped), start=1):
        assert not np.array_equal(after["weights"], before["weights"])
        np.testing.assert_allclose(twin[f"dense{i}"]["kernel"], after["weights"], atol=1e-6)
        np.testing.assert_allclose(twin[f"dense{i}"]["bias"], after["bias"], atol=1e-6)


def test_jax_train_step_runs_at_the_asked_batch_and_dtype_and_blocks_each_step(monkeypatch):
    steps = _capture_steps(monkeypatch, jax_cases)
    compiled = []

    def keep_compiled(*args):
        compiled.append((args, compile_timed(*args)))
        return compiled[-1][1]

    monkeypatch.setattr(jax_cases, "compile_timed", keep_compiled)
    blocked = []
    block = jax.block_until_ready
    monkeypatch.setattr(jax, "block_until_ready", lambda x: blocked.append(1) or block(x))
    row = jax_cases.measure_train_step("mlp", 8, "bfloat16", TimingBudget.fixed(1))
    (_, _, (images, labels), _), program = compiled[0]
    assert images.shape == (8, 28, 28, 1) and labels.shape == (8,)
    assert "bf16" in program.executable.as_text()  # the model computes in bfloat16
    assert (row.batch_size, row.dtype) == (8, "bfloat16")
    count = len(blocked)
    steps[0]()  # the timed step must wait for its result, or it times only the dispatch
    assert len(blocked) == count + 1
    data = jax_cases.synthetic_dataset("mlp", 4)
    jax_cases.measure_scratch_twin(data.images, data.labels, TimingBudget.fixed(1))
    steps[1]()
    assert len(blocked) == count + 2
