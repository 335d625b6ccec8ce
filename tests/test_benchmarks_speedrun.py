"""benchmarks/speedrun.py, with airbench itself replaced by a recording stand-in."""

import importlib
import types
from pathlib import Path

import numpy as np
import pytest

from jaxcifar.data import Dataset

torch = pytest.importorskip("torch")
BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def test_airbench_trains_the_epochs_asked_for(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # as `python benchmarks/speedrun.py` has it
    airbench_cpu = importlib.import_module("airbench_cpu")
    speedrun_benchmark = importlib.import_module("speedrun")
    calls = []

    class Loader:
        def __init__(self, *args, **kwargs):
            self.images = torch.zeros(2, 3, 4, 4, dtype=torch.uint8)

    def train94(loader, **kwargs):
        calls.append(kwargs)
        return "model"

    utils = types.SimpleNamespace(CifarLoader=Loader, evaluate=lambda model, loader, tta_level: 0.5)
    lib94 = types.SimpleNamespace(make_net94=lambda **kwargs: None, train94=train94)
    monkeypatch.setattr(airbench_cpu, "import_airbench", lambda: (utils, lib94))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    data = Dataset(np.zeros((4, 4, 4, 3), np.uint8), np.arange(4, dtype=np.int32) % 2, ("a", "b"))
    rows = []
    speedrun_benchmark.run_airbench(data, data, 2, (8, 16, 16), 3.5, rows.append)
    assert [call["epochs"] for call in calls] == [3.5] * 3  # the warm-up and two timed runs
    assert [row["tta_test_accuracy"] for row in rows] == [0.5, 0.5]
