"""The DALL·E dVAE: shapes, integer codes = one-hot codes, the logit-Laplace likelihood against
its density formula, pixel mapping, logical axis names, bf16 compute and errors naming the value
(parity with OpenAI's `dall_e` is in tests/convert/test_dvae_parity.py)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import logical_axes
import numpy as np
import pytest
from scipy import integrate

from unclip_jax import sharding
from unclip_jax.models.dvae import (
    LOGIT_LAPLACE_EPS,
    DVAEConfig,
    DVAEDecoder,
    DVAEEncoder,
    logit_laplace_nll,
    map_pixels,
    unmap_pixels,
)

TINY = DVAEConfig(group_count=3, n_hid=16, n_blk_per_group=1, vocab_size=32, n_init=8)


@pytest.fixture(scope="module")
def tiny():
    """(encoder variables, decoder variables, images [2, 16, 16, 3] in [0, 1])."""
    images = jax.random.uniform(jax.random.key(1), (2, 16, 16, 3))
    encoder = jax.jit(DVAEEncoder(TINY).init)(jax.random.key(2), images)
    decoder = jax.jit(DVAEDecoder(TINY).init)(jax.random.key(3), jnp.zeros((1, 4, 4), jnp.int32))
    return nn.unbox(encoder), nn.unbox(decoder), images


def test_shapes_and_codes(tiny):
    encoder, decoder, images = tiny
    logits = DVAEEncoder(TINY).apply(encoder, images)
    assert logits.shape == (2, 4, 4, 32) and logits.dtype == jnp.float32
    codes = DVAEEncoder(TINY).apply(encoder, images, method=DVAEEncoder.encode)
    assert codes.dtype == jnp.int32
    np.testing.assert_array_equal(codes, jnp.argmax(logits, -1))
    stats = DVAEDecoder(TINY).apply(decoder, codes)
    assert stats.shape == (2, 16, 16, 6)
    recon = DVAEDecoder(TINY).apply(decoder, codes, method=DVAEDecoder.decode)
    assert recon.shape == (2, 16, 16, 3)
    assert float(recon.min()) >= 0.0 and float(recon.max()) <= 1.0
    expected = unmap_pixels(jax.nn.sigmoid(stats[..., :3]))
    np.testing.assert_allclose(recon, expected, atol=1e-7)


def test_integer_codes_equal_one_hot_codes(tiny):
    """The decoder's code projection gathers rows for integer codes: same as the 1×1 conv."""
    _, decoder, _ = tiny
    codes = jax.random.randint(jax.random.key(4), (2, 3, 5), 0, TINY.vocab_size)
    one_hot = jax.nn.one_hot(codes, TINY.vocab_size)
    by_index = DVAEDecoder(TINY).apply(decoder, codes)
    by_one_hot = DVAEDecoder(TINY).apply(decoder, one_hot)
    np.testing.assert_allclose(by_index, by_one_hot, atol=1e-6)
    relaxed = jax.nn.softmax(jax.random.normal(jax.random.key(5), one_hot.shape))
    assert not np.allclose(DVAEDecoder(TINY).apply(decoder, relaxed), by_one_hot, atol=1e-4)


def _numpy_nll(y, mu, b):
    """-log of the logit-Laplace density, written directly from its formula."""
    logit = np.log(y / (1 - y))
    density = np.exp(-np.abs(logit - mu) / b) / (2 * b * y * (1 - y))
    return -np.log(density)


def test_logit_laplace_nll_equals_the_density_formula():
    rng = np.random.RandomState(0)
    y = map_pixels(rng.rand(2, 5, 5, 3)).astype(np.float64)
    mu = rng.randn(2, 5, 5, 3) * 2
    log_b = rng.randn(2, 5, 5, 3) * 0.5
    stats = np.concatenate([mu, log_b], -1)
    ours = logit_laplace_nll(jnp.asarray(y, jnp.float32), jnp.asarray(stats, jnp.float32))
    np.testing.assert_allclose(ours, _numpy_nll(y, mu, np.exp(log_b)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mu, log_b", [(0.0, 0.0), (1.5, -1.0), (-2.0, 0.3)])
def test_logit_laplace_density_integrates_to_one(mu, log_b):
    """∫ f(y) dy over (0, 1) = 1, integrated in logit space: y = σ(u), dy = y(1 - y) du."""
    u = np.linspace(-15.0, 15.0, 30001)
    y = 1 / (1 + np.exp(-u))
    stats = jnp.broadcast_to(jnp.asarray([mu, log_b], jnp.float32), (len(u), 2))
    nll = logit_laplace_nll(jnp.asarray(y, jnp.float32)[:, None], stats)[:, 0]
    total = integrate.trapezoid(np.exp(-np.asarray(nll, np.float64)) * y * (1 - y), u)
    assert abs(total - 1.0) < 1e-3


def test_pixel_mapping_round_trips_and_clamps():
    x = jnp.linspace(0.0, 1.0, 11)
    mapped = map_pixels(x)
    np.testing.assert_allclose(
        mapped[jnp.array([0, -1])], [LOGIT_LAPLACE_EPS, 1 - LOGIT_LAPLACE_EPS]
    )
    np.testing.assert_allclose(unmap_pixels(mapped), x, atol=1e-6)
    np.testing.assert_array_equal(unmap_pixels(jnp.asarray([0.0, 1.0])), [0.0, 1.0])


def test_every_parameter_has_logical_axis_names_that_map_to_the_mesh():
    for module, x in (
        (DVAEEncoder(TINY), jnp.zeros((1, 4, 4, 3))),
        (DVAEDecoder(TINY), jnp.zeros((1, 1, 1), jnp.int32)),
    ):
        boxed = jax.eval_shape(lambda m=module, x=x: m.init(jax.random.key(0), x))["params"]
        assert not logical_axes.unnamed(boxed)
    specs = logical_axes.mesh_shardings(boxed)
    assert tuple(specs["input"]["kernel"].spec) == (sharding.TENSOR, sharding.FSDP)


def test_parameter_names_follow_the_groups(tiny):
    encoder, decoder, _ = tiny
    names = set(encoder["params"])
    assert names == {"input", "output"} | {f"group_{g}_block_1" for g in (1, 2, 3)}
    # Widths 16, 32, 64 (encoder) and 64, 32, 16 (decoder): an id_path where the width changes.
    assert "id_path" not in encoder["params"]["group_1_block_1"]
    assert "id_path" in encoder["params"]["group_2_block_1"]
    assert encoder["params"]["group_3_block_1"]["conv_4"]["kernel"].shape == (1, 1, 16, 64)
    assert decoder["params"]["input"]["kernel"].shape == (32, 8)
    assert decoder["params"]["group_1_block_1"]["conv_1"]["kernel"].shape == (1, 1, 8, 16)


def test_bfloat16_compute_keeps_float32_parameters_and_outputs(tiny):
    encoder, decoder, images = tiny
    logits = DVAEEncoder(TINY, dtype=jnp.bfloat16).apply(encoder, images)
    stats = DVAEDecoder(TINY, dtype=jnp.bfloat16).apply(decoder, jnp.argmax(logits, -1))
    assert logits.dtype == stats.dtype == jnp.float32
    reference = DVAEEncoder(TINY).apply(encoder, images)
    assert float(jnp.max(jnp.abs(logits - reference))) < 0.05 * float(jnp.max(jnp.abs(reference)))


def test_errors_name_the_bad_value(tiny):
    encoder, decoder, _ = tiny
    with pytest.raises(ValueError, match=r"n_hid must be a multiple of 4.*got 30"):
        DVAEConfig(n_hid=30)
    with pytest.raises(ValueError, match=r"group_count must be a positive integer, got 0"):
        DVAEConfig(group_count=0)
    with pytest.raises(ValueError, match=r"vocab_size must be an integer >= 2, got 1"):
        DVAEConfig(vocab_size=1)
    with pytest.raises(ValueError, match=r"multiples of 4, got shape \(1, 18, 16, 3\)"):
        DVAEEncoder(TINY).apply(encoder, jnp.zeros((1, 18, 16, 3)))
    with pytest.raises(ValueError, match=r"\[B, H, W, 3\].*got shape \(1, 16, 16, 1\)"):
        DVAEEncoder(TINY).apply(encoder, jnp.zeros((1, 16, 16, 1)))
    with pytest.raises(ValueError, match=r"\[B, h, w, 32\] floats, got shape \(1, 4, 4, 31\)"):
        DVAEDecoder(TINY).apply(decoder, jnp.zeros((1, 4, 4, 31)))
    with pytest.raises(ValueError, match=r"got shape \(4, 4\) of int32"):
        DVAEDecoder(TINY).apply(decoder, jnp.zeros((4, 4), jnp.int32))
    with pytest.raises(ValueError, match=r"stats must have shape \(2, 6\).*got \(2, 5\)"):
        logit_laplace_nll(jnp.full((2, 3), 0.5), jnp.zeros((2, 5)))
