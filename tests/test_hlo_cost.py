"""The HLO cost model counts every executed step: a scanned matmul's FLOPs (forward and with its
gradient) within 1% of the closed form, loop bodies times their trip counts (read from the
loop's condition where XLA dropped the annotation; a traced one: the count given), a
conditional's costliest branch, and an estimated utilisation in (0, 1]; a convolution's real
multiply-adds only (padding and dilation holes skipped, TPU's attention convolutions included),
and HBM bytes of what moves: slices, not whole operands."""

import re

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


def xla_flops(compiled) -> float:
    xla = compiled.cost_analysis()
    return (xla[0] if isinstance(xla, list | tuple) else xla)["flops"]


ARGS = (jnp.ones((LAYERS, WIDTH, WIDTH)), jnp.ones((BATCH, WIDTH)))


def test_a_scanned_matmul_counts_every_layer():
    got = hlo_cost.estimate(compiled_text(scanned, *ARGS), CHIP)
    assert got["flops_per_chip"] == pytest.approx(LAYERS * MATMUL, rel=0.01)
    assert got["unknown_trip_counts"] == 0
    # XLA's own analysis counts the body once.
    assert xla_flops(jax.jit(scanned).lower(*ARGS).compile()) < 0.5 * LAYERS * MATMUL


def test_the_gradient_counts_three_matmuls_per_layer_and_stays_under_the_roofline():
    got = hlo_cost.estimate(compiled_text(jax.grad(scanned, argnums=(0, 1)), *ARGS), CHIP)
    assert got["flops_per_chip"] == pytest.approx(3 * LAYERS * MATMUL, rel=0.01)
    assert 0 < got["estimated_utilisation"] <= 1
    assert got["estimated_step_s"] >= got["flops_per_chip"] / CHIP.peak_flops


def test_convolution_flops_are_taps_on_the_input_times_input_features_per_output():
    def conv(x, k):
        return jax.lax.conv_general_dilated(
            x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )

    x, k = jnp.ones((2, 16, 16, 32)), jnp.ones((3, 3, 32, 48))
    compiled = jax.jit(conv).lower(x, k).compile()
    got = hlo_cost.estimate(compiled.as_text(), CHIP)["flops_per_chip"]
    taps = 16 * 3 - 2  # a side: the edge outputs' taps on the padding are no work
    assert got == 2 * 2 * 48 * 32 * taps * taps
    assert got == pytest.approx(xla_flops(compiled), rel=1e-6)


def test_a_strided_dilated_padded_convolution_counts_only_taps_on_the_input():
    def conv(x, k):  # 9 px, 3 taps 2 apart, stride 2, 2 px of padding a side: 5 outputs a side
        return jax.lax.conv_general_dilated(
            x, k, (2, 2), ((2, 2), (2, 2)), rhs_dilation=(2, 2),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )  # fmt: skip

    x, k = jnp.ones((2, 9, 9, 4)), jnp.ones((3, 3, 4, 6))
    # 5 outputs × 3 taps a side, less the first and the last output's tap on the padding.
    taps = 5 * 3 - 2
    compiled = jax.jit(conv).lower(x, k).compile()
    got = hlo_cost.estimate(compiled.as_text(), CHIP)["flops_per_chip"]
    assert got == 2 * 2 * 4 * 6 * taps * taps
    assert got == pytest.approx(xla_flops(compiled), rel=1e-6)


def test_a_transposed_convolution_skips_the_holes_of_its_dilated_input():
    def conv_transpose(x, k):  # lhs_dilate 2: 8 px spread over 15, padded to 19, 17 outputs
        return jax.lax.conv_general_dilated(
            x, k, (1, 1), ((2, 2), (2, 2)), lhs_dilation=(2, 2),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )  # fmt: skip

    x, k = jnp.ones((2, 8, 8, 4)), jnp.ones((3, 3, 4, 6))
    compiled = jax.jit(conv_transpose).lower(x, k).compile()
    got = hlo_cost.estimate(compiled.as_text(), CHIP)["flops_per_chip"]
    # Each input pixel meets each kernel tap once (a strided convolution's transpose); counting
    # every window position of the 17 × 17 outputs would be 4.5 times as many.
    assert got == 2 * 2 * 4 * 6 * (8 * 3) ** 2
    assert got == pytest.approx(xla_flops(compiled), rel=1e-6)


# Karlo's prior attention as libtpu compiles it for a v5e chip (`experiments/karlo_aot.py`), cut
# down to one layer (tilings left out of the layouts): batched dots become convolutions with
# batch and heads as spatial dimensions, the QKV projection's padded by heads − 1 a side, the two
# attention products' lhs-dilated by batch × heads (window = lhs_dilate, stride one less); the
# weights prefetched into on-chip memory (`S(1)`) in four async slices that a `ConcatBitcast`
# joins in place.
B, L, H, D, WIDTH_TPU = 8, 81, 32, 64, 2048


def tpu_attention_hlo() -> str:
    x, w, v = "bf16[8,81,2048,1]{3,1,2,0}", "bf16[2048,32,64]{0,2,1}", "bf16[8,81,32,64]{1,3,2,0}"
    piece, on_chip = "bf16[2048,8,64]{0,2,1:S(1)}", "{0,2,1:S(1)}"
    slices = "".join(
        f"  %slice-start.{i} = (({w}), {piece}, s32[]{{:S(2)}}) slice-start(%w), "
        f"slice={{[0:2048], [{8 * i}:{8 * i + 8}], [0:64]}}\n"
        f"  %slice-done.{i} = {piece} slice-done(%slice-start.{i})\n"
        for i in range(4)
    )
    dilated = "window={size=8x32 stride=7x31 lhs_dilate=8x32}"
    return (
        f"HloModule jit_attention, is_scheduled=true\n\n"
        f"ENTRY %main (x: {x}, w: {w}, v: {v}) -> bf16[8,32,64,81] {{\n"
        f"  %x = {x} parameter(0)\n  %w = {w} parameter(1)\n  %v = {v} parameter(2)\n{slices}"
        f"  %custom-call.0 = bf16[2048,32,64]{on_chip} custom-call(%slice-done.0, %slice-done.1, "
        f'%slice-done.2, %slice-done.3), custom_call_target="ConcatBitcast"\n'
        f"  %bitcast.0 = bf16[2048,32,64,1]{{0,3,2,1:S(1)}} bitcast(%custom-call.0)\n"
        f"  %convolution.0 = bf16[8,81,32,64]{{1,3,2,0:S(1)}} convolution(%x, %bitcast.0), "
        f"window={{size=1x32 pad=0_0x31_31 rhs_reversal=0x1}}, dim_labels=0bf1_i1o0->0b1f\n"
        f"  %convolution.1 = f32[8,32,81,81]{{3,2,1,0}} convolution(%convolution.0, %v), "
        f"{dilated}, dim_labels=0b1f_0o1i->01bf\n"
        f"  %convert.0 = bf16[8,32,81,81]{{3,2,1,0}} convert(%convolution.1)\n"
        f"  ROOT %convolution.2 = bf16[8,32,64,81]{{2,3,1,0}} convolution(%v, %convert.0), "
        f"{dilated}, dim_labels=0f1b_01oi->01bf\n}}\n"
    )


def test_tpu_attention_convolutions_count_batch_times_heads_matmuls():
    got = hlo_cost.estimate(tpu_attention_hlo(), hlo_cost.CHIPS["v5e"])
    projection = 2 * B * L * WIDTH_TPU * H * D  # x @ w: of each head's 32 taps, one on x
    attention = 2 * (2 * B * H * L * L * D)  # q·kᵀ and probs·v
    assert got["flops_per_chip"] == pytest.approx(projection + attention, rel=0.01)


def test_prefetched_weight_slices_are_read_from_hbm_once():
    got = hlo_cost.estimate(tpu_attention_hlo(), hlo_cost.CHIPS["v5e"])
    weights, x, v = 2 * WIDTH_TPU * H * D, 2 * B * L * WIDTH_TPU, 2 * B * L * H * D
    scores = 4 * B * H * L * L  # f32, written by the q·kᵀ convolution in HBM
    # The slices' reads (not 4 × the whole operand and the tuple echoing it); the ConcatBitcast
    # and everything in S(1) (the projection's output, the slices) move nothing.
    expected = weights + x + (v + scores) + (scores + scores / 2) + (v + scores / 2 + v)
    assert got["hbm_bytes_per_step"] == expected


def looped(n, w, x):  # a traced trip count: the `while` has no known_trip_count
    return jax.lax.fori_loop(0, n, lambda i, h: jnp.tanh(h @ w), x).sum()


def test_a_loop_without_a_trip_count_runs_the_given_count():
    w, x = ARGS[0][0], ARGS[1]
    text = compiled_text(looped, 3, w, x)
    run = {n: hlo_cost.estimate(text, CHIP, unknown_trip_count=n) for n in (None, 0, 1, 7)}
    assert all(r["unknown_trip_counts"] == 1 for r in run.values())
    assert run[None] == run[1]  # counted once by default
    for field in ("flops_per_chip", "hbm_bytes_per_step", "estimated_step_s"):
        once = run[1][field] - run[0][field]
        assert run[7][field] - run[0][field] == pytest.approx(7 * once, rel=1e-9)
    assert run[7]["flops_per_chip"] == pytest.approx(7 * MATMUL, rel=0.01)
    assert hlo_cost.program_flops(text, unknown_trip_count=7) == run[7]["flops_per_chip"]


def test_a_counted_loop_without_its_annotation_reads_the_count_from_its_condition():
    """XLA's TPU passes drop `known_trip_count` from some scans (DALL·E's 64 layers): the count
    comes from the condition `counter < N` and the counter's constant start."""
    text = compiled_text(jax.grad(scanned, argnums=(0, 1)), *ARGS)
    stripped = re.sub(r'"known_trip_count":\{"n":"\d+"\}', "", text)
    assert stripped != text
    assert hlo_cost.estimate(stripped, CHIP) == hlo_cost.estimate(text, CHIP)
    assert hlo_cost.CostModel(stripped, CHIP).loops_without_trip_count() == []


def test_a_conditional_counts_its_costliest_branch():
    def branches(p, w, x):
        return jax.lax.cond(p, lambda: (x @ w @ w).sum(), lambda: (x @ w).sum())

    text = compiled_text(branches, True, ARGS[0][0], ARGS[1])
    assert " conditional(" in text
    got = hlo_cost.estimate(text, CHIP)["flops_per_chip"]
    assert got == pytest.approx(2 * MATMUL, rel=0.01)  # not the two branches' 3 matmuls


def test_a_scan_reads_and_writes_each_layers_slice_not_the_stack():
    def stacked(w, x):  # reads w[i] (dynamic-slice), writes ys[i] (dynamic-update-slice)
        return jax.lax.scan(lambda h, w_i: (h @ w_i, h @ w_i), x, w)[1]

    got = hlo_cost.estimate(compiled_text(stacked, *ARGS), CHIP)
    stack = 4 * LAYERS * WIDTH * WIDTH
    # Charging the whole stacked weights (and outputs) at every layer would be LAYERS × stack.
    assert got["hbm_bytes_per_step"] < LAYERS * stack / 2
    assert got["flops_per_chip"] == pytest.approx(LAYERS * MATMUL, rel=0.01)


def test_a_file_without_an_entry_is_refused():
    with pytest.raises(ValueError, match="no ENTRY computation"):
        hlo_cost.estimate("HloModule empty\n", CHIP)
