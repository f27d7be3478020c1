"""Each element of the BSR degradation (BSRGAN; Real-ESRGAN's second order) against the effect
it must have on a known image: noise variance, blur and resampling against high frequencies,
JPEG's 8×8 blocks, camera noise's signal-dependent variance, and per-image stage orders."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unclip_jax.data import degradations as bsr
from unclip_jax.data import jpeg

STAGE = dict(iso=0, aniso=1, down_up=2, noise=3, jpeg=4, camera=5)
YY, XX = np.mgrid[0:32, 0:32]


def _stage(name: str, **ranges):
    return bsr.bsr_stages(bsr.BSRConfig(**ranges))[STAGE[name]]


def _high_frequency_energy(image) -> float:
    """Spectral energy above a quarter of the sampling rate of [H, W, C]."""
    image = np.asarray(image, np.float64)
    spectrum = np.abs(np.fft.fft2(image - image.mean((0, 1)), axes=(0, 1))) ** 2
    fy = np.abs(np.fft.fftfreq(image.shape[0]))[:, None]
    fx = np.abs(np.fft.fftfreq(image.shape[1]))[None, :]
    return float(spectrum[np.maximum(fx, fy) > 0.25].sum())


def _white_noise(seed: int = 0, size: int = 32) -> jnp.ndarray:
    return jnp.asarray(np.random.default_rng(seed).uniform(-0.5, 0.5, (size, size, 3)), jnp.float32)


def _block_step_ratio(error: np.ndarray) -> float:
    """Mean |horizontal step| of an [H, W] error image across 8-px block edges over inside."""
    steps = np.abs(np.diff(error, axis=1))
    edge = np.arange(steps.shape[1]) % 8 == 7
    return float(steps[:, edge].mean() / steps[:, ~edge].mean())


@pytest.mark.parametrize("gray", [0.0, 1.0])
def test_gaussian_noise_adds_its_variance_to_a_flat_image(gray):
    std = 10 / 127.5
    flat = jnp.full((64, 64, 3), 0.2)
    out = np.asarray(
        _stage("noise", noise_std=(std, std), gray_noise_probability=gray)(jax.random.key(0), flat)
    )
    np.testing.assert_allclose(out.var(axis=(0, 1)), std**2, rtol=0.1)
    np.testing.assert_allclose(out.mean(), 0.2, atol=3 * std / 64)
    correlation = np.corrcoef(out[..., 0].ravel(), out[..., 1].ravel())[0, 1]
    assert (correlation > 0.999) if gray else (abs(correlation) < 0.1)


@pytest.mark.parametrize("name", ["iso", "aniso"])
def test_blurs_remove_high_frequencies_and_keep_the_mean(name):
    x = _white_noise(1)
    out = _stage(name, blur_sigma=(1.5, 1.5))(jax.random.key(0), x)
    assert _high_frequency_energy(out) < 0.05 * _high_frequency_energy(x)
    assert abs(float(out.mean() - x.mean())) < 0.01


def test_down_up_round_trip_removes_high_frequencies_and_keeps_low_ones():
    x = _white_noise(2)
    out = _stage("down_up", resample_scale=(0.5, 0.5))(jax.random.key(0), x)
    assert _high_frequency_energy(out) < 0.3 * _high_frequency_energy(x)
    wave = jnp.asarray(np.sin(2 * np.pi * XX / 16)[..., None] * np.ones(3) * 0.5, jnp.float32)
    kept = _stage("down_up", resample_scale=(0.5, 0.5))(jax.random.key(0), wave)
    assert float(jnp.abs(kept - wave)[4:-4, 4:-4].mean()) < 0.05


def test_jpeg_leaves_8x8_block_edges_in_a_smooth_image_and_flattens_a_checkerboard():
    smooth = 0.6 * np.sin(XX / 6.0 + YY / 9.0)
    image = jnp.asarray(np.repeat(smooth[..., None], 3, -1), jnp.float32)
    error = np.asarray(jpeg.jpeg_compress(image, 10) - image)[..., 0]
    assert _block_step_ratio(error) > 1.5
    checker = jnp.asarray(np.repeat((((XX + YY) % 2) * 0.8 - 0.4)[..., None], 3, -1), jnp.float32)
    out = np.asarray(jpeg.jpeg_compress(checker, 10))
    assert np.abs(out - np.asarray(checker)).mean() > 0.1


def test_closing_steps_resize_then_leave_jpeg_blocks_at_the_low_resolution():
    smooth = 0.6 * np.sin(XX / 3.0 + YY / 5.0)
    image = jnp.asarray(np.repeat(smooth[..., None], 3, -1), jnp.float32)
    close = jax.jit(bsr.resize_and_compress, static_argnums=(2, 3))
    strong = np.asarray(close(jax.random.key(0), image, 16, (5.0, 5.0)))
    light = np.asarray(close(jax.random.key(0), image, 16, (100.0, 100.0)))
    assert strong.shape == light.shape == (16, 16, 3)
    assert _block_step_ratio((strong - light)[..., 0]) > 1.5  # same resize, different JPEG


def _linear_green(out: jnp.ndarray) -> np.ndarray:
    """Linear values of the green channel at an RGGB sensor's green sites."""
    linear = np.asarray(bsr.srgb_to_linear((out + 1) / 2))[..., 1]
    return linear[np.asarray(bsr.bayer_masks(*out.shape[:2]))[..., 1] > 0]


def test_camera_noise_variance_is_shot_times_signal_plus_read():
    """At green sites (kept as sampled by demosaicing, unit gains) the linear-domain noise is
    the raw noise: variance shot · signal + read, larger in bright regions than in dark."""
    shot, read = 0.01, 1e-4
    variances = []
    for level in (-0.6, 0.6):
        flat = jnp.full((64, 64, 3), level)
        out = bsr.camera_sensor_noise(jax.random.key(1), flat, shot, read, jnp.ones(3))
        signal = float(bsr.srgb_to_linear(jnp.float32((level + 1) / 2)))
        variances.append(_linear_green(out).var())
        np.testing.assert_allclose(variances[-1], shot * signal + read, rtol=0.1)
    assert variances[1] > 3 * variances[0]


def test_camera_pipeline_is_exact_without_noise_where_the_image_is_linear():
    gains = jnp.array([2.2, 1.0, 1.7])
    flat = jnp.broadcast_to(jnp.array([0.3, -0.2, 0.5]), (16, 16, 3))
    out = bsr.camera_sensor_noise(jax.random.key(0), flat, 0.0, 0.0, gains)
    np.testing.assert_allclose(np.asarray(out), np.asarray(flat), atol=1e-5)
    ramp = jnp.linspace(0.05, 0.6, 16)[None, :, None] * jnp.ones((16, 1, 3))
    image = 2 * bsr.linear_to_srgb(ramp) - 1
    out = bsr.camera_sensor_noise(jax.random.key(0), image, 0.0, 0.0, gains)
    np.testing.assert_allclose(
        np.asarray(out)[1:-1, 1:-1], np.asarray(image)[1:-1, 1:-1], atol=1e-5
    )


def test_camera_stage_fires_with_its_probability():
    flat = jnp.full((16, 16, 3), 0.1)
    never = jax.jit(_stage("camera", camera_noise_probability=0.0))
    always = jax.jit(_stage("camera", camera_noise_probability=1.0))
    keys = jax.random.split(jax.random.key(3), 4)
    assert all(np.array_equal(np.asarray(never(k, flat)), np.asarray(flat)) for k in keys)
    assert all(float(jnp.std(always(k, flat))) > 1e-3 for k in keys)


def test_stage_orders_differ_across_a_batch_and_order_matters():
    orders = np.asarray(bsr.bsr_orders(jax.random.key(0), 16))
    assert orders.shape == (16, 1, bsr.NUM_STAGES)
    assert (np.sort(orders, axis=-1) == np.arange(bsr.NUM_STAGES)).all()
    assert len({tuple(o.ravel()) for o in orders}) > 8
    two = np.asarray(bsr.bsr_orders(jax.random.key(0), 16, _second_order()))
    assert two.shape == (16, 2, bsr.NUM_STAGES)
    assert (two[:, 0] != two[:, 1]).any(axis=-1).mean() > 0.5
    # Noise then blur smooths the noise away; blur then noise keeps it.
    config = bsr.BSRConfig(blur_sigma=(1.5, 1.5), noise_std=(0.1, 0.1))
    stages = tuple(bsr.bsr_stages(config)[STAGE[name]] for name in ("iso", "noise"))
    run = jax.jit(lambda order: bsr.apply_in_order(stages, order, jax.random.key(0), flat))
    flat = jnp.zeros((32, 32, 3))
    first_noise, first_blur = run(jnp.array([1, 0])), run(jnp.array([0, 1]))
    assert _high_frequency_energy(first_noise) < 0.05 * _high_frequency_energy(first_blur)


def _second_order() -> bsr.BSRConfig:
    return bsr.BSRConfig(second_order=bsr.REAL_ESRGAN_SECOND_ORDER)


def test_second_order_pass_is_deterministic_in_range_and_keeps_the_mean():
    """One image through both passes and the closing steps (`bsr_degrade` maps this function
    over the batch)."""
    image = _white_noise(4, 16) * 0.5 + 0.1
    degrade = jax.jit(lambda key: bsr.bsr_degrade_image(key, image, 8, _second_order()))
    out = degrade(jax.random.key(0))
    assert out.shape == (8, 8, 3)
    np.testing.assert_array_equal(np.asarray(degrade(jax.random.key(0))), np.asarray(out))
    assert float(out.min()) >= -1 and float(out.max()) <= 1
    assert float(jnp.abs(degrade(jax.random.key(1)) - out).mean()) > 1e-3
    assert abs(float(out.mean() - image.mean())) < 0.1


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="camera_noise_probability"):
        bsr.BSRConfig(camera_noise_probability=1.5)
    with pytest.raises(ValueError, match="shot_noise"):
        bsr.BSRConfig(shot_noise=(0.0, 0.01))
    with pytest.raises(ValueError, match="second order of its own"):
        bsr.BSRConfig(second_order=_second_order())
