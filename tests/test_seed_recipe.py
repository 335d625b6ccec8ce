"""benchmarks/seed_recipe.py's order of runs (the runs themselves: tests/test_fused.py and,
through the GPU call's smoke run, tests/test_gpu_checks.py)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import seed_recipe  # noqa: E402


def test_runs_go_path_by_path_with_pallas_last_and_one_profile():
    # The GPU call's two processes: the XLA paths, then the Pallas paths.
    xla = seed_recipe.plan_runs(["scan", "fused"], [1, 4], [], [])
    assert xla == [("scan", 1, False, False), ("fused", 1, False, False),
                   ("fused", 4, False, False)]  # fmt: skip
    pallas = seed_recipe.plan_runs(
        ["fused-pallas-all", "fused-pallas"], [1, 4], ["fused-pallas-all"], ["fused-pallas-all"]
    )
    assert pallas == [
        ("fused-pallas-all", 1, False, True),  # profiled once: the first unroll, not a graph
        ("fused-pallas-all", 1, True, False),
        ("fused-pallas-all", 4, False, False),
        ("fused-pallas-all", 4, True, False),
        ("fused-pallas", 1, False, False),
        ("fused-pallas", 4, False, False),
    ]
    # Named in any order, the Pallas paths still run after the others.
    mixed = seed_recipe.plan_runs(["fused-pallas", "loop", "fused"], [2], ["loop"], [])
    assert mixed == [("loop", 2, False, True), ("fused", 2, False, False),
                     ("fused-pallas", 2, False, False)]  # fmt: skip
