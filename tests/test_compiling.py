import types

import jax
import jax.numpy as jnp
import numpy as np

from jaxcifar import compiling
from jaxcifar.bench.xla_cost import kernel_counts
from jaxcifar.models import layers


def _lowered_sum(rows: int) -> jax.stages.Lowered:
    """A program that sums (rows, 1024) uint8 images as float32."""
    images = jax.ShapeDtypeStruct((rows, 1024), jnp.uint8)
    return jax.jit(lambda x: x.astype(jnp.float32).sum()).lower(images)


def test_cpu_programs_keep_matrix_products_in_ynnpack():
    # (Reductions stay there too, convolutions leave: the tests below.) The dense layers'
    # products are the step's largest: on XLA's own loops they would run several times slower.
    products = jax.jit(jnp.matmul).lower(jnp.ones((64, 1024)), jnp.ones((1024, 128)))
    assert "ynn_fusion" in compiling.compile_program(products).as_text()
    reductions_only = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_REDUCE"}
    assert "ynn_fusion" not in compiling.compile_program(products, reductions_only).as_text()


def test_other_backends_keep_xla_defaults(monkeypatch):
    for backend in ("gpu", "tpu"):
        monkeypatch.setattr(jax, "default_backend", lambda backend=backend: backend)
        assert compiling.compiler_options() is None, backend


def test_a_callers_own_options_apply_on_other_backends_too(monkeypatch):
    # (The speedrun rounds to bfloat16 where it says, by an option of its own, on GPUs.)
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    lowered = _lowered_sum(64)
    assert "ynn_fusion" in compiling.compile_program(lowered).as_text()  # XLA's defaults
    own = compiling.compile_program(lowered, {"xla_cpu_experimental_ynn_fusion_type": ""})
    assert "ynn_fusion" not in own.as_text()


def _entry_convolution_count(compiled: jax.stages.Compiled) -> int:
    """Convolutions the program runs as instructions of their own (Eigen's), not inside a
    library fusion."""
    return kernel_counts(compiled.as_text())["convolution"]


def test_convolutions_compile_without_ynnpack_to_the_same_gradient():
    def loss(kernel, x):
        return jax.nn.relu(layers.conv({"kernel": kernel}, x, jnp.float32)).sum()

    kernel = jax.random.normal(jax.random.key(0), (3, 3, 3, 32))  # the seed CNN's conv1
    x = jax.random.normal(jax.random.key(1), (4, 32, 32, 3))  # the seed recipe's batch
    lowered = jax.jit(jax.grad(loss)).lower(kernel, x)
    assert _entry_convolution_count(lowered.compile()) == 0  # XLA's default: in YNNPACK
    ours = compiling.compile_program(lowered)
    assert _entry_convolution_count(ours) == 2  # the value's and the kernel gradient's
    # Sums of 4,096 products, added in another order: float32 rounding apart.
    expected = lowered.compile()(kernel, x)
    np.testing.assert_allclose(ours(kernel, x), expected, rtol=1e-4, atol=1e-4)


def test_reductions_stay_in_ynnpack_whatever_the_program_size():
    # 256 KiB and just over 64 MiB of float32: the boundaries of the size tiers that
    # benchmarks/README.md's finding 11 removed, kept so tiers coming back do not go unnoticed.
    for rows in (64, 16_385):
        compiled = compiling.compile_program(_lowered_sum(rows))
        assert "ynn_fusion" in compiled.as_text()
        assert float(compiled(jnp.ones((rows, 1024), jnp.uint8))) == rows * 1024


def test_a_callers_own_options_apply_over_the_cpu_ones():
    lowered = _lowered_sum(64)
    assert "ynn_fusion" in compiling.compile_program(lowered).as_text()
    # No library fusion types at all: the caller's value for the same option wins.
    own = compiling.compile_program(lowered, {"xla_cpu_experimental_ynn_fusion_type": ""})
    assert "ynn_fusion" not in own.as_text()
    assert float(own(jnp.ones((64, 1024), jnp.uint8))) == 64 * 1024


def test_a_jaxlib_without_the_option_or_fusion_type_compiles_with_its_defaults(monkeypatch):
    lowered = _lowered_sum(4096)
    monkeypatch.setattr(compiling, "_FUSION_TYPES", "LIBRARY_FUSION_TYPE_NO_SUCH")
    compiled = compiling.compile_program(lowered)
    assert float(compiled(jnp.ones((4096, 1024), jnp.uint8))) == 4096 * 1024
    monkeypatch.setattr(compiling, "_OPTION", "xla_cpu_no_such_option_in_any_jaxlib")
    compiled = compiling.compile_program(lowered)
    assert float(compiled(jnp.ones((4096, 1024), jnp.uint8))) == 4096 * 1024


def test_compiled_per_shape_compiles_once_per_shape_and_matches_jit(monkeypatch):
    compiles = []
    real_compile = compiling.compile_program
    monkeypatch.setattr(
        compiling, "compile_program",
        lambda lowered, options: compiles.append(options) or real_compile(lowered, options),
    )  # fmt: skip
    jitted = jax.jit(lambda params, batch: (params["w"] * batch[0]).sum(1) + batch[1])
    options = {"xla_allow_excess_precision": False}  # the caller's own, to every compile
    step = compiling.compiled_per_shape(jitted, options)
    params = {"w": jnp.arange(3.0)}
    for rows in (2, 2, 5, 2):
        batch = (jnp.ones((rows, 3)), jnp.arange(rows, dtype=jnp.float32))
        np.testing.assert_array_equal(step(params, batch), jitted(params, batch))
    assert compiles == [options, options]


def test_a_jaxlib_without_the_option_still_takes_the_callers_own_options(monkeypatch):
    monkeypatch.setattr(compiling, "_OPTION", "xla_cpu_no_such_option_in_any_jaxlib")
    own = {"xla_cpu_experimental_ynn_fusion_type": ""}
    compiled = compiling.compile_program(_lowered_sum(64), own)
    assert "ynn_fusion" not in compiled.as_text()


def test_compiled_per_shape_compiles_again_for_another_dtype():
    step = compiling.compiled_per_shape(jax.jit(lambda x: x * 2))
    assert step(jnp.ones(3, jnp.float32)).dtype == jnp.float32
    doubled = step(jnp.arange(3, dtype=jnp.int32))  # same shape, not float32's program
    assert doubled.dtype == jnp.int32 and doubled.tolist() == [0, 2, 4]


def test_compile_timed_times_lowering_within_the_whole_and_passes_the_options(monkeypatch):
    now = [0.0]
    monkeypatch.setattr(compiling, "time", types.SimpleNamespace(perf_counter=lambda: now[0]))
    asked = []

    def compile(compiler_options=None):  # 2 s of XLA compilation
        now[0] += 2.0
        asked.append(compiler_options)
        return "executable"

    def lower(*args):  # 1 s of tracing and lowering
        now[0] += 1.0
        return types.SimpleNamespace(compile=compile)

    jitted = types.SimpleNamespace(lower=lower)
    own = {"xla_allow_excess_precision": False}
    for xla_defaults in (True, False):
        timed = compiling.compile_timed(jitted, 1, xla_defaults=xla_defaults, options=own)
        assert timed == ("executable", 1.0, 3.0)
    assert asked == [own, {**compiling.compiler_options(), **own}]
