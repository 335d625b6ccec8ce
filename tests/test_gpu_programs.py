"""benchmarks/gpu_programs.py's target description and report (compiling for the GPU needs
JAX's CUDA plugin, which is no test dependency)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import gpu_programs  # noqa: E402
import pytest  # noqa: E402


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


def test_the_graphed_part_of_an_epoch_is_read_from_its_thunks():
    assert gpu_programs.graphed_part(BODY_GRAPH) == "loop body"
    assert gpu_programs.graphed_part(WHOLE_LOOP) == "whole loop"
    assert gpu_programs.graphed_part(SPLIT_BODY) == "1 graph + 3 thunks"
    with pytest.raises(ValueError, match="runs no while loop"):
        gpu_programs.graphed_part("000: kCustomKernel [source | sink] fusion grid: [1, 1, 1]")


def test_the_report_gives_each_loop_its_trip_count_and_a_step_none():
    rows = [
        {"path": "loop", "unroll": None, "kernels_per_step": 55.0, "epoch_loop": False,
         "kernels_by_kind": {"fusion kLoop": 55.0}, "trip_count": None, "options": {},
         "command_buffers": None, "compile_seconds": 1.2},
        {"path": "fused", "unroll": 4, "kernels_per_step": 6.25, "epoch_loop": True,
         "kernels_by_kind": {"custom-call t": 6.0, "fusion kLoop": 0.25}, "trip_count": 3125,
         "options": {"xla_gpu_enable_command_buffer": "WHILE"},
         "command_buffers": "whole loop", "compile_seconds": 16.5},
        {"path": "until", "unroll": 1, "kernels_per_step": 3.0, "epoch_loop": True,
         "kernels_by_kind": {"fusion kLoop": 3.0}, "trip_count": None, "options": {},
         "command_buffers": "loop body", "compile_seconds": 0.5},
    ]  # fmt: skip
    table = gpu_programs.render_markdown(rows, 4, "H100").splitlines()[-3:]
    assert table == [
        "| loop | - | 55 | fusion kLoop 55 | - | - | 1.2 |",
        "| fused (graph epoch) | 4 | 6.25 | custom-call t 6, fusion kLoop 0.25 | 3125 "
        "| whole loop | 16.5 |",
        "| until | 1 | 3 | fusion kLoop 3 | none | loop body | 0.5 |",
    ]
