"""benchmarks/speedrun.py, with airbench itself replaced by a recording stand-in; and how the
benchmark scripts end on bad input.

torch is not a test dependency, so a mock stands in for it too: what is checked here is the
plumbing of the benchmark's flags into airbench's calls, not PyTorch.
"""

import importlib
import json
import sys
import types
from pathlib import Path
from unittest import mock

import numpy as np
import pytest

from jaxcifar.data import Dataset

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _import_without_torch(request, name: str) -> types.ModuleType:
    """Benchmark module `name`, imported afresh against the mock torch in sys.modules; when
    the test ends it leaves sys.modules (the mock torch leaves with monkeypatch), and any
    module of that name there before comes back."""
    previous = sys.modules.pop(name, None)

    def restore() -> None:
        sys.modules.pop(name, None)
        if previous is not None:
            sys.modules[name] = previous

    request.addfinalizer(restore)
    return importlib.import_module(name)


@pytest.mark.parametrize("on_gpu", [False, True])
def test_airbench_trains_the_epochs_asked_for_without_timing_a_test_loader(
    monkeypatch, request, on_gpu
):
    # airbench's `train` builds a test loader from test.pt on every call, used only when
    # verbose: ours is not timed loading the test set, so neither is airbench, on any device.
    monkeypatch.setitem(sys.modules, "torch", mock.MagicMock(name="torch"))
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # as `python benchmarks/speedrun.py` has it
    airbench_cpu = _import_without_torch(request, "airbench_cpu")
    speedrun_benchmark = _import_without_torch(request, "speedrun")
    sys.modules["torch"].cuda.is_available.return_value = on_gpu
    calls = []

    def train94(loader, **kwargs):
        calls.append({**kwargs, "test_loader": utils.CifarLoader("cifar10", train=False)})
        return "model"

    utils = types.SimpleNamespace(
        CifarLoader=lambda *args, **kwargs: mock.MagicMock(name="loader"),
        evaluate=lambda model, loader, tta_level: 0.5,
    )
    lib94 = types.SimpleNamespace(make_net94=lambda **kwargs: None, train94=train94)
    monkeypatch.setattr(airbench_cpu, "import_airbench", lambda: (utils, lib94))
    data = Dataset(np.zeros((4, 4, 4, 3), np.uint8), np.arange(4, dtype=np.int32) % 2, ("a", "b"))
    rows = []
    speedrun_benchmark.run_airbench(data, data, 2, (8, 16, 16), 3.5, rows.append)
    assert [call["epochs"] for call in calls] == [3.5] * 3  # the warm-up and two timed runs
    assert [call["test_loader"] for call in calls] == [None] * 3
    assert [row["tta_test_accuracy"] for row in rows] == [0.5, 0.5]


def test_an_airbench_failure_is_recorded_and_the_other_dtypes_still_run(
    monkeypatch, request, tmp_path
):
    # On the GPU machine airbench runs between ours in bfloat16 and in float16: its failure
    # must not cost the float16 runs, and must say why in the results and the exit status.
    monkeypatch.setitem(sys.modules, "torch", mock.MagicMock(name="torch"))
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    speedrun_benchmark = _import_without_torch(request, "speedrun")
    data = Dataset(np.zeros((4, 4, 4, 3), np.uint8), np.arange(4, dtype=np.int32) % 2, ("a", "b"))
    monkeypatch.setattr(speedrun_benchmark, "load_split", lambda *args, **kwargs: data)
    monkeypatch.setattr(speedrun_benchmark, "airbench_missing", lambda: None)

    def measure(recipe, train_set, test_set, *, runs, warmup, epoch_mode, on_row):
        assert warmup  # as airbench's runs have one
        on_row(speedrun_benchmark.measure.run_row("jaxcifar-fast", recipe.dtype, 1.0, 2.0, 0.5))
        return [], {}

    def run_airbench(*args):
        raise RuntimeError("CUDA error: an illegal memory access")

    monkeypatch.setattr(speedrun_benchmark.measure, "measure", measure)
    monkeypatch.setattr(speedrun_benchmark, "run_airbench", run_airbench)
    argv = ["speedrun.py", "--dtypes", "bfloat16", "float16", "--out", str(tmp_path)]
    monkeypatch.setattr(sys, "argv", argv)
    try:
        speedrun_benchmark.main()
    except SystemExit as stop:
        assert stop.code == 1
    else:
        raise AssertionError("an airbench failure must end with exit status 1")
    (results_file,) = tmp_path.glob("speedrun-*.json")
    results = json.loads(results_file.read_text())
    assert [run["dtype"] for run in results["runs"]] == ["bfloat16", "float16"]
    reason = "failed: RuntimeError: CUDA error: an illegal memory access"
    assert results["skipped"] == [{"system": "airbench94", "reason": reason}]
    assert f"- airbench94: {reason}" in results_file.with_suffix(".md").read_text()


@pytest.mark.parametrize("script", ["data_load.py", "seed_recipe.py", "speedrun.py"])
def test_a_benchmark_given_a_missing_data_dir_ends_in_one_line_naming_it(tmp_path, script):
    # As the CLI's commands end: no traceback for a mistake the message alone explains.
    import subprocess

    missing = tmp_path / "missing"
    done = subprocess.run([sys.executable, str(BENCHMARKS / script), "--data-dir", str(missing)],
                          capture_output=True, text=True, cwd=tmp_path)  # fmt: skip
    expected = f"{script}: error: data dir {missing} does not exist\n"
    assert (done.returncode, done.stderr) == (2, expected)


@pytest.mark.parametrize("script, argv, message", [
    ("benchmarks/speedrun.py", ["--runs", "0"], "argument --runs: expected a positive integer"),
    ("benchmarks/speedrun.py", ["--name", "../x"], "argument --name: expected a plain file name"),
    ("benchmarks/seed_recipe.py", ["--unroll", "0"], "argument --unroll: expected a positive"),
    ("benchmarks/cnn_variants.py", ["--batch-sizes", "0"], "argument --batch-sizes: expected a"),
    ("benchmarks/cnn_variants.py", ["--seconds", "nan"], "argument --seconds: expected a"),
    ("benchmarks/data_load.py", ["--repeats", "0"], "argument --repeats: expected a positive"),
    # The recipe's plan refused it after the data's decoding, naming a --batch-size the script
    # has not.
    ("benchmarks/speedrun.py", ["--limit-train", "512"],
     "argument --limit-train: both systems train on batches of 1024 images, airbench94's; give "
     "at least 1024, got 512"),
    ("scripts/ablation_scratch.py", ["--seed", "-1"], "argument --seed: expected an integer in"),
    ("benchmarks/gpu_programs.py", ["--batch", "0"], "argument --batch: expected a positive"),
    ("benchmarks/triton_resources.py", ["--warps", "0"], "argument --warps: expected a positive"),
    ("benchmarks/airbench_parity.py", ["--images", "0"], "argument --images: expected a positive"),
    ("benchmarks/airbench_parity.py", ["--epochs", "nan"], "argument --epochs: expected a"),
])  # fmt: skip
def test_a_script_refuses_a_bad_count_before_it_runs(script, argv, message):
    # They ran on: --runs -2 wrote results of no run (exit 0), --unroll 0 recorded a failed
    # path (exit 0), --name ../x wrote outside --out, and the others ended in tracebacks
    # (after 10 s of decoding, for --repeats 0).
    import subprocess

    done = subprocess.run([sys.executable, str(BENCHMARKS.parent / script), *argv],
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert f"{Path(script).name}: error: {message}" in done.stderr


def test_a_benchmark_scripts_warning_is_one_line_naming_it(monkeypatch, capsys):
    # The lookahead's warning printed as Python's two lines: a file path and a source line.
    import warnings

    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import bench_paths

    monkeypatch.setattr(sys, "argv", [str(BENCHMARKS / "speedrun.py")])
    bench_paths.run_script(lambda: warnings.warn("4 training steps end before the first "
                                                 "lookahead update", UserWarning))  # fmt: skip
    assert capsys.readouterr().err == (
        "speedrun.py: warning: 4 training steps end before the first lookahead update\n"
    )


# Runs a benchmark script as `python benchmarks/SCRIPT ARGS` would, with the modules named in
# MISSING uninstalled (None in sys.modules) and those in FAKE installed as empty modules.
_RUN_SCRIPT_WITH = """
import importlib.machinery, runpy, sys, types
script, missing, fake, *args = sys.argv[1:]
sys.modules.update(dict.fromkeys(filter(None, missing.split(",")), None))
for name in filter(None, fake.split(",")):
    sys.modules[name] = types.ModuleType(name)
    sys.modules[name].__spec__ = importlib.machinery.ModuleSpec(name, None)
sys.argv = [script, *args]
sys.path.insert(0, str(__import__("pathlib").Path(script).parent))
runpy.run_path(script, run_name="__main__")
"""


@pytest.mark.parametrize("missing, fake, reason", [
    ("torch", "", "torch is not installed"),
    ("airbench", "torch", "the airbench package is not installed (pip install --no-deps airbench)"),
])  # fmt: skip
def test_the_airbench_parity_check_shows_its_help_and_says_what_is_missing(missing, fake,
                                                                           reason):  # fmt: skip
    # It imported torch first: --help, and a run where torch is not installed, were
    # ModuleNotFoundError tracebacks.
    import subprocess

    command = [sys.executable, "-c", _RUN_SCRIPT_WITH, str(BENCHMARKS / "airbench_parity.py"),
               missing, fake]  # fmt: skip
    shown = subprocess.run([*command, "--help"], capture_output=True, text=True)
    assert shown.returncode == 0 and shown.stdout.startswith("usage: airbench_parity.py [-h]")
    done = subprocess.run(command, capture_output=True, text=True)
    assert (done.returncode, done.stderr) == (
        2, f"airbench_parity.py: error: {reason}: this check runs airbench's own code beside "
        "ours\n"
    )  # fmt: skip
