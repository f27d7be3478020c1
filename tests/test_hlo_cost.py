"""The HLO cost model counts every executed step: a scanned matmul's FLOPs (forward and with its
gradient) within 1% of the closed form, loop bodies times their trip counts, and an estimated
utilisation in (0, 1]."""

import jax
import jax.numpy as jnp
import pytest

from unclip_jax import hlo_cost

CHIP = hlo_cost.CHIPS["v5p"]
LAYERS, BATCH, WIDTH = 12, 64, 256
MATMUL = 2 * BATCH * WIDTH * WIDTH


def scanned(w, x):
    def layer(h, w_i):
        return h @ w_i, None

    return jax.lax.scan(layer, x, w)[0].sum()


def compiled_text(fn, *args) -> str:
    return jax.jit(fn).lower(*args).compile().as_text()


ARGS = (jnp.ones((LAYERS, WIDTH, WIDTH)), jnp.ones((BATCH, WIDTH)))


def test_a_scanned_matmul_counts_every_layer():
    got = hlo_cost.estimate(compiled_text(scanned, *ARGS), CHIP)
    assert got["flops_per_chip"] == pytest.approx(LAYERS * MATMUL, rel=0.01)
    assert got["unknown_trip_counts"] == 0
    # XLA's own analysis counts the body once.
    xla = jax.jit(scanned).lower(*ARGS).compile().cost_analysis()
    xla = xla[0] if isinstance(xla, list | tuple) else xla
    assert xla["flops"] < 0.5 * LAYERS * MATMUL


def test_the_gradient_counts_three_matmuls_per_layer_and_stays_under_the_roofline():
    got = hlo_cost.estimate(compiled_text(jax.grad(scanned, argnums=(0, 1)), *ARGS), CHIP)
    assert got["flops_per_chip"] == pytest.approx(3 * LAYERS * MATMUL, rel=0.01)
    assert 0 < got["estimated_utilisation"] <= 1
    assert got["estimated_step_s"] >= got["flops_per_chip"] / CHIP.peak_flops


def test_convolution_flops_are_window_times_input_features_per_output():
    def conv(x, k):
        return jax.lax.conv_general_dilated(
            x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )

    x, k = jnp.ones((2, 16, 16, 32)), jnp.ones((3, 3, 32, 48))
    got = hlo_cost.estimate(compiled_text(conv, x, k), CHIP)
    assert got["flops_per_chip"] == pytest.approx(2 * 2 * 16 * 16 * 48 * 9 * 32, rel=0.01)


def test_a_file_without_an_entry_is_refused():
    with pytest.raises(ValueError, match="no ENTRY computation"):
        hlo_cost.estimate("HloModule empty\n", CHIP)
