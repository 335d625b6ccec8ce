"""benchmarks/gpu_programs.py's target description and report (compiling for the GPU needs
JAX's CUDA plugin, which is no test dependency)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import gpu_programs  # noqa: E402


def test_the_target_description_is_protobuf_text():
    fields = {"info": {"core_count": 132, "cc": {"major": 9}, "clock": 1.98}, "name": "H 100"}
    assert gpu_programs.text_proto(fields) == (
        'info { core_count: 132 cc { major: 9 } clock: 1.98 } name: "H 100"'
    )
    # Every field XLA reads to compile for the GPU, under the names its proto gives them.
    h100 = gpu_programs.text_proto(gpu_programs.H100)
    assert h100.startswith("gpu_device_info { cuda_compute_capability { major: 9 } core_count: 132")
    assert "shared_memory_per_block_optin: 232448" in h100
    assert h100.endswith('platform_name: "CUDA" dnn_version_info { major: 9 minor: 8 } '
                         'device_description_str: "NVIDIA H100 80GB HBM3"')  # fmt: skip


def test_the_report_gives_each_loop_its_trip_count_and_a_step_none():
    rows = [
        {"path": "loop", "unroll": None, "kernels_per_step": 55.0, "epoch_loop": False,
         "kernels_by_kind": {"fusion kLoop": 55.0}, "kernel_megabytes_per_step": 3.21,
         "trip_count": None, "options": {},
         "command_buffers": None, "compile_seconds": 1.2},
        {"path": "fused", "unroll": 4, "kernels_per_step": 6.25, "epoch_loop": True,
         "kernels_by_kind": {"custom-call t": 6.0, "fusion kLoop": 0.25},
         "kernel_megabytes_per_step": None, "trip_count": 3125,
         "options": {"xla_gpu_enable_command_buffer": "WHILE"},
         "command_buffers": "whole loop", "compile_seconds": 16.5},
        {"path": "until", "unroll": 1, "kernels_per_step": 3.0, "epoch_loop": True,
         "options": {"xla_allow_excess_precision": False},  # not a graph epoch's
         "kernels_by_kind": {"fusion kLoop": 3.0}, "kernel_megabytes_per_step": 4790.3,
         "trip_count": None,
         "command_buffers": "loop body", "compile_seconds": 0.5},
    ]  # fmt: skip
    table = gpu_programs.render_markdown(rows, 4, "H100").splitlines()[-3:]
    assert table == [
        "| loop | - | 55 | 3.2 | fusion kLoop 55 | - | - | 1.2 |",
        "| fused (graph epoch) | 4 | 6.25 | - | custom-call t 6, fusion kLoop 0.25 | 3125 "
        "| whole loop | 16.5 |",
        "| until | 1 | 3 | 4,790.3 | fusion kLoop 3 | none | loop body | 0.5 |",
    ]
