import jax
import jax.numpy as jnp
import numpy as np

from jaxcifar import cpu_fusions
from jaxcifar.cpu_fusions import LIBRARY_FUSIONS_MAX_BYTES

OFF = {"xla_cpu_experimental_ynn_fusion_type": ""}


def _lowered_with_float_rows(rows: int) -> jax.stages.Lowered:
    """A program whose largest float array is (rows, 1024) float32, beside a larger uint8 one."""
    images = jax.ShapeDtypeStruct((4096, 1024), jnp.uint8)
    return jax.jit(lambda x: x[:rows].astype(jnp.float32).sum()).lower(images)


def test_largest_float_array_counts_floats_only_in_bytes():
    assert cpu_fusions.largest_float_array_bytes(_lowered_with_float_rows(3)) == 3 * 1024 * 4
    half = jax.jit(lambda x: (x * 2).astype(jnp.float32)).lower(jnp.ones((8, 16), jnp.bfloat16))
    assert cpu_fusions.largest_float_array_bytes(half) == 8 * 16 * 4
    integers = jax.jit(lambda x: x + 1).lower(jnp.ones((8,), jnp.int32))
    assert cpu_fusions.largest_float_array_bytes(integers) == 0


def test_library_fusions_turn_off_just_above_the_threshold():
    rows_at_threshold = LIBRARY_FUSIONS_MAX_BYTES // (1024 * 4)
    assert cpu_fusions.compiler_options(_lowered_with_float_rows(rows_at_threshold)) is None
    assert cpu_fusions.compiler_options(_lowered_with_float_rows(rows_at_threshold + 1)) == OFF


def test_other_backends_keep_xla_defaults(monkeypatch):
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert cpu_fusions.compiler_options(_lowered_with_float_rows(4096)) is None


def _conv_gelu_sum(batch: int) -> jax.stages.Lowered:
    """A 3x3 convolution of (batch, 32, 32, 16) float32 images, exact GELU and a sum: XLA:CPU
    hands the convolution and the GELU-and-sum to YNNPACK by default."""

    def loss(kernel, x):
        dims = ("NHWC", "HWIO", "NHWC")
        y = jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=dims)
        return jax.nn.gelu(y, approximate=False).sum()

    kernel = jax.ShapeDtypeStruct((3, 3, 16, 16), jnp.float32)
    return jax.jit(loss).lower(kernel, jax.ShapeDtypeStruct((batch, 32, 32, 16), jnp.float32))


def test_a_large_program_compiles_without_library_fusions_and_computes_the_same():
    small, large = _conv_gelu_sum(2), _conv_gelu_sum(64)  # 128 KiB and 4 MiB of images
    assert "ynn_fusion" in cpu_fusions.compile_for_size(small).as_text()
    assert "ynn_fusion" in large.compile().as_text()  # XLA's default
    compiled = cpu_fusions.compile_for_size(large)
    assert "ynn_fusion" not in compiled.as_text()
    kernel = jax.random.normal(jax.random.key(0), (3, 3, 16, 16))
    x = jax.random.normal(jax.random.key(1), (64, 32, 32, 16))
    np.testing.assert_allclose(compiled(kernel, x), large.compile()(kernel, x), rtol=1e-4)


def test_a_jaxlib_without_the_option_compiles_with_its_defaults(monkeypatch):
    monkeypatch.setattr(cpu_fusions, "_OPTION", "xla_cpu_no_such_option_in_any_jaxlib")
    compiled = cpu_fusions.compile_for_size(_lowered_with_float_rows(4096))
    assert float(compiled(jnp.ones((4096, 1024), jnp.uint8))) == 4096 * 1024


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
