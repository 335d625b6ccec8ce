"""The scripts under scripts/ that are Python: run in-process on tiny synthetic data."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from jaxcifar import scratch

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def ablation(monkeypatch):
    """scripts/ablation_scratch.py as a module, on 40 random training and 20 test images."""
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "1")  # the script sets it unless set: keep ours
    spec = importlib.util.spec_from_file_location(
        "ablation_scratch", REPO / "scripts" / "ablation_scratch.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rng = np.random.default_rng(0)
    data = {
        "x_train": rng.random((40, 784), np.float32), "y_train": rng.integers(0, 10, 40),
        "x_test": rng.random((20, 784), np.float32), "y_test": rng.integers(0, 10, 20),
        "class_names": tuple(str(i) for i in range(10)), "source": "synthetic",
    }  # fmt: skip
    monkeypatch.setattr(module.scratch_command, "load_inputs", lambda *args, **kwargs: data)
    return module


@pytest.mark.parametrize("flags, decay", [([], "constant"), (["--lr-decay", "linear"], "linear")])
def test_ablation_trains_at_the_rate_schedule_it_records(ablation, monkeypatch, tmp_path, flags,
                                                         decay):  # fmt: skip
    # `jaxcifar scratch` decays the rate by default; the ablation's committed results did not.
    train, decays = scratch.train, []

    def recorded(*args, **kwargs):
        decays.append(kwargs["decay"])
        return train(*args, **kwargs)

    monkeypatch.setattr(scratch, "train", recorded)
    argv = ["ablation_scratch.py", "--epochs", "2", "--out", str(tmp_path), *flags]
    monkeypatch.setattr(sys, "argv", argv)
    ablation.main()
    assert decays == [decay == "linear"] * len(ablation.HIDDEN_LAYERS)
    results = json.loads((tmp_path / "scratch-ablation.json").read_text())
    assert results["config"]["lr_decay"] == decay
    markdown = (tmp_path / "scratch-ablation.md").read_text()
    assert f"squared error, {decay} learning rate, batch 32," in markdown
