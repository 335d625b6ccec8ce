import jax
import jax.numpy as jnp
import numpy as np

from jaxcifar import cpu_fusions
from jaxcifar.bench.xla_cost import kernel_counts
from jaxcifar.cpu_fusions import LIBRARY_FUSIONS_MAX_BYTES, XLA_DEFAULTS_MAX_BYTES
from jaxcifar.models import layers

OPTION = "xla_cpu_experimental_ynn_fusion_type"
OFF = {OPTION: ""}


def _lowered_with_float_rows(rows: int) -> jax.stages.Lowered:
    """A program whose largest float array is (rows, 1024) float32, beside a uint8 one of
    twice as many rows."""
    images = jax.ShapeDtypeStruct((2 * rows, 1024), jnp.uint8)
    return jax.jit(lambda x: x[:rows].astype(jnp.float32).sum()).lower(images)


def test_largest_float_array_counts_floats_only_in_bytes():
    assert cpu_fusions.largest_float_array_bytes(_lowered_with_float_rows(3)) == 3 * 1024 * 4
    half = jax.jit(lambda x: (x * 2).astype(jnp.float32)).lower(jnp.ones((8, 16), jnp.bfloat16))
    assert cpu_fusions.largest_float_array_bytes(half) == 8 * 16 * 4
    integers = jax.jit(lambda x: x + 1).lower(jnp.ones((8,), jnp.int32))
    assert cpu_fusions.largest_float_array_bytes(integers) == 0


def test_defaults_then_library_fusions_but_convolutions_then_none_as_programs_grow():
    def options(float_bytes: int) -> dict[str, str] | None:
        return cpu_fusions.compiler_options(_lowered_with_float_rows(float_bytes // (1024 * 4)))

    assert options(XLA_DEFAULTS_MAX_BYTES) is None
    middling = options(XLA_DEFAULTS_MAX_BYTES + 4096)
    assert middling is not None and middling[OPTION] and "CONVOLUTION" not in middling[OPTION]
    assert options(LIBRARY_FUSIONS_MAX_BYTES) == middling
    assert options(LIBRARY_FUSIONS_MAX_BYTES + 4096) == OFF


def test_other_backends_keep_xla_defaults(monkeypatch):
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert cpu_fusions.compiler_options(_lowered_with_float_rows(4096)) is None


def _entry_convolution_count(compiled: jax.stages.Compiled) -> int:
    """Convolutions the program runs as instructions of their own (Eigen's), not inside a
    library fusion."""
    return kernel_counts(compiled.as_text())["convolution"]


def test_convolutions_compile_without_ynnpack_to_the_same_gradient():
    def loss(kernel, x):
        return jax.nn.relu(layers.conv({"kernel": kernel}, x, jnp.float32)).sum()

    kernel = jax.random.normal(jax.random.key(0), (3, 3, 3, 32))  # the seed CNN's conv1
    x = jax.random.normal(jax.random.key(1), (8, 32, 32, 3))  # 1 MiB of activations
    lowered = jax.jit(jax.grad(loss)).lower(kernel, x)
    assert _entry_convolution_count(lowered.compile()) == 0  # XLA's default: in YNNPACK
    ours = cpu_fusions.compile_for_size(lowered)
    assert _entry_convolution_count(ours) == 2  # the value's and the kernel gradient's
    # Sums of 8,192 products, added in another order: float32 rounding apart.
    expected = lowered.compile()(kernel, x)
    np.testing.assert_allclose(ours(kernel, x), expected, rtol=1e-4, atol=1e-4)


def test_a_large_program_compiles_without_library_fusions_and_computes_the_same():
    rows_above = LIBRARY_FUSIONS_MAX_BYTES // (1024 * 4) + 1
    small, large = _lowered_with_float_rows(64), _lowered_with_float_rows(rows_above)
    assert "ynn_fusion" in cpu_fusions.compile_for_size(small).as_text()  # the sum's
    assert "ynn_fusion" in large.compile().as_text()  # XLA's default
    compiled = cpu_fusions.compile_for_size(large)
    assert "ynn_fusion" not in compiled.as_text()
    images = jnp.ones((2 * rows_above, 1024), jnp.uint8)
    np.testing.assert_allclose(compiled(images), large.compile()(images), rtol=1e-6)
    np.testing.assert_allclose(compiled(images), rows_above * 1024, rtol=1e-6)


def test_a_jaxlib_without_the_option_or_fusion_type_compiles_with_its_defaults(monkeypatch):
    lowered = _lowered_with_float_rows(4096)
    monkeypatch.setattr(cpu_fusions, "_MIDDLING_PROGRAM_FUSIONS", "LIBRARY_FUSION_TYPE_NO_SUCH")
    compiled = cpu_fusions.compile_for_size(lowered)
    assert float(compiled(jnp.ones((8192, 1024), jnp.uint8))) == 4096 * 1024
    monkeypatch.setattr(cpu_fusions, "_OPTION", "xla_cpu_no_such_option_in_any_jaxlib")
    compiled = cpu_fusions.compile_for_size(lowered)
    assert float(compiled(jnp.ones((8192, 1024), jnp.uint8))) == 4096 * 1024


def test_compiled_per_shape_compiles_once_per_shape_and_matches_jit(monkeypatch):
    compiles = []
    real_compile = cpu_fusions.compile_for_size
    monkeypatch.setattr(
        cpu_fusions, "compile_for_size", lambda lowered: compiles.append(1) or real_compile(lowered)
    )
    jitted = jax.jit(lambda params, batch: (params["w"] * batch[0]).sum(1) + batch[1])
    step = cpu_fusions.compiled_per_shape(jitted)
    params = {"w": jnp.arange(3.0)}
    for rows in (2, 2, 5, 2):
        batch = (jnp.ones((rows, 3)), jnp.arange(rows, dtype=jnp.float32))
        np.testing.assert_array_equal(step(params, batch), jitted(params, batch))
    assert len(compiles) == 2
