"""scripts/gpu_checks.sh, the one device call that measures every GPU figure, in its QUICK mode.

A GPU is lent to few sessions and for minutes: a script broken by a change to the benchmark
scripts or the package would waste that call. QUICK=1 runs the same three parts (the seed
recipe by path, the fast recipe against airbench94 where airbench is installed, the
step-time benchmark) at smoke-test sizes on this CPU, on the real data, writing to a
temporary folder.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import jax

from jaxcifar.data.cache import cache_dir

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "gpu_checks.sh"
# A GPU's profile has its kernels; a CPU has no device planes to profile.
ON_CPU = jax.default_backend() == "cpu"


def test_every_step_has_a_time_limit_and_together_they_fit_one_device_call():
    # A hang anywhere, GPU initialisation included, must leave the other steps their time.
    text = SCRIPT.read_text()
    limits = [int(n) for n in re.findall(r'(?:timeout|run_part "[^"]*") (\d+) ', text)]
    assert sum(limits) <= 580  # the device tool stops a call at 600 s; leave it some slack
    assert f"together {sum(limits)} s" in text  # what the header says
    unlimited = re.findall(r'^(?:nvidia-smi|"\$python") .*', text, re.MULTILINE)
    assert not unlimited, unlimited


def test_quick_mode_runs_every_part_and_writes_each_results_file(
    shared_data, tmp_path, tmp_path_factory
):
    env = {
        **os.environ,
        "QUICK": "1",
        "OUT": str(tmp_path),
        "PYTHON": sys.executable,
        "DATA_DIR": str(shared_data),
        "JAXCIFAR_CACHE": str(cache_dir()),  # the suite's decoded datasets, not the checkout
        # On a CPU a graph epoch is the same program as the run before it: loaded from JAX's
        # persistent cache rather than compiled again (Pallas interpreted: ~9 s a compile).
        "JAX_COMPILATION_CACHE_DIR": str(tmp_path_factory.mktemp("xla")),
    }
    result = subprocess.run(
        ["bash", str(SCRIPT)],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]

    seed = json.loads((tmp_path / "seed-recipe-cpu.json").read_text())
    # The XLA paths' process, then the Pallas paths' (--append), into one results file;
    # fused-pallas-all again with its epoch as one CUDA graph (on a CPU, the same program).
    runs = [(row["path"], row["graph"]) for row in seed]
    assert runs == [("scan", False), ("fused", False), ("fused-pallas-all", False),
                    ("fused-pallas-all", True), ("fused-pallas", False)]  # fmt: skip
    losses = [row["last_epoch_train_loss"] for row in seed]
    assert max(losses) - min(losses) < 1e-4 * max(losses), losses  # one recipe, five runs
    assert "Failed" not in (tmp_path / "seed-recipe-cpu.md").read_text()
    # fused-pallas-all was profiled for one more epoch (a CPU has no device planes: []).
    profiles = [row.get("profile") for row in seed]
    assert profiles[:2] + profiles[3:] == [None, None, None, None]
    assert isinstance(profiles[2], list) and (profiles[2] == []) == ON_CPU

    speedrun = json.loads((tmp_path / "speedrun-cpu.json").read_text())
    ours = [run for run in speedrun["runs"] if run["system"] == "jaxcifar-fast"]
    # 0.2 epoch is no more than chance (0.13 of 500 images now): the accuracy is only there.
    assert len(ours) == 1 and isinstance(ours[0]["tta_test_accuracy"], float)
    assert ours[0]["train_seconds"] > 0 and ours[0]["cold_seconds"] >= ours[0]["train_seconds"]
    others = {run["system"] for run in speedrun["runs"]} - {"jaxcifar-fast"}
    skipped = {entry["system"] for entry in speedrun["skipped"]}
    assert others | skipped == {"airbench94"}  # measured beside ours, or said why not

    (bench,) = tmp_path.glob("cpu-*.json")
    rows = json.loads(bench.read_text())["rows"]
    assert any(row["framework"] == "jax" and row["model"] == "cnn" for row in rows)

    # The device tool brings back at most 8 files from its output folder.
    assert len(list(tmp_path.iterdir())) <= 8, sorted(path.name for path in tmp_path.iterdir())
    assert "== step-time benchmark (#5)" in (tmp_path / "gpu_checks.log").read_text()


def _run_with_stub_python(tmp_path, parts: str) -> subprocess.CompletedProcess:
    """The script with `true` as its interpreter (every step succeeds at once), PARTS set."""
    env = {**os.environ, "PARTS": parts, "OUT": str(tmp_path), "PYTHON": "true"}
    return subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True,
                          timeout=60)  # fmt: skip


def test_parts_runs_only_the_parts_it_names_and_logs_what_it_prints(tmp_path):
    result = _run_with_stub_python(tmp_path, "speedrun")
    assert result.returncode == 0, result.stdout + result.stderr
    parts = re.findall(r"^== (.*)$", result.stdout, re.MULTILINE)
    assert parts == ["devices", "fast recipe vs airbench94 (#9 B)"]
    assert (tmp_path / "gpu_checks.log").read_text() == result.stdout


def test_an_unknown_part_is_refused_before_anything_runs(tmp_path):
    result = _run_with_stub_python(tmp_path, "seed speedruns")
    assert result.returncode == 2
    expected = "PARTS: unknown part 'speedruns' (expected some of: seed speedrun bench)"
    assert expected in result.stdout
    assert "== " not in result.stdout
