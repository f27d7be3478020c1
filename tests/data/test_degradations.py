"""Upsampler degradations: blur, BSR stages and JPEG, checked against closed forms and PIL."""

import io

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from unclip_jax.data import degradations, jpeg, shapes_captions, shapes_render


def _shapes(count: int, size: int) -> np.ndarray:
    """[count, size, size, 3] float32 in [-1, 1], with a texture so that JPEG has work."""
    images = []
    for i in range(count):
        scene = shapes_captions.scene_of(
            shapes_captions.make_example(shapes_captions.CONFIGS[0], "test", i)
        )
        images.append(shapes_render.render(scene, size).astype(np.float32))
    stripes = 30 * np.sin(np.arange(size) / 3.0)[None, None, :, None]
    return np.clip(np.stack(images) * 0.8 + stripes, 0, 255) / 127.5 - 1


def _high_frequency_energy(image: np.ndarray) -> float:
    """Spectral energy above a quarter of the sampling rate, per image [H, W, C]."""
    spectrum = np.abs(np.fft.fft2(image - image.mean((0, 1)), axes=(0, 1))) ** 2
    fy = np.abs(np.fft.fftfreq(image.shape[0]))[:, None]
    fx = np.abs(np.fft.fftfreq(image.shape[1]))[None, :]
    return float(spectrum[np.maximum(fx, fy) > 0.25].sum())


def test_gaussian_blur_matches_scipy():
    x = np.random.default_rng(0).normal(size=(24, 20, 3)).astype(np.float32)
    out = degradations.gaussian_blur(jnp.asarray(x), jnp.float32(1.3), 5)
    want = ndimage.gaussian_filter(x, (1.3, 1.3, 0), mode="mirror", truncate=5 / 1.3)
    np.testing.assert_allclose(np.asarray(out), want, atol=2e-3)


def test_blur_removes_high_frequencies():
    x = np.random.default_rng(1).normal(size=(32, 32, 3)).astype(np.float32)
    energies = [
        _high_frequency_energy(np.asarray(degradations.gaussian_blur(jnp.asarray(x), s, 6)))
        for s in (0.5, 1.0, 2.0)
    ]
    before = _high_frequency_energy(x)
    assert energies[0] < 0.6 * before and energies[1] < 0.1 * before
    assert energies[0] > energies[1] > energies[2]
    # The low-resolution conditioning of the first upsampler loses detail the same way.
    images = _shapes(4, 64)
    plain = jax.image.resize(images, (4, 32, 32, 3), "cubic")
    blurred = degradations.blur_degrade(jax.random.key(0), images, 32, (0.8, 1.2))
    assert blurred.shape == (4, 32, 32, 3)
    for a, b in zip(np.asarray(plain), np.asarray(blurred), strict=True):
        assert _high_frequency_energy(b) < 0.5 * _high_frequency_energy(a)
        assert abs(a.mean() - b.mean()) < 0.02


def test_anisotropic_kernel_has_the_rotated_covariance():
    sx, sy, theta = 3.0, 1.5, 0.6
    kernel = np.asarray(degradations.gaussian_kernel(sx, sy, theta, 15))
    grid = np.arange(-15, 16)
    y, x = np.meshgrid(grid, grid, indexing="ij")
    cov = np.array(
        [
            [np.sum(kernel * x * x), np.sum(kernel * x * y)],
            [np.sum(kernel * x * y), np.sum(kernel * y * y)],
        ]
    )
    rotation = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    want = rotation @ np.diag([sx**2, sy**2]) @ rotation.T
    np.testing.assert_allclose(cov, want, atol=0.05)
    assert abs(kernel.sum() - 1) < 1e-5


@pytest.mark.parametrize("method", [0, 2])  # linear, lanczos3
def test_resample_round_trip_equals_resizing_down_and_up(method):
    """With a static half scale the round trip is exactly jax.image.resize down, then up."""
    name = degradations.RESIZE_METHODS[method]
    x = jnp.asarray(np.random.default_rng(2).normal(size=(32, 32, 3)).astype(np.float32))
    out = degradations.resample_round_trip(x, jnp.float32(0.5), method, method)
    want = jax.image.resize(jax.image.resize(x, (16, 16, 3), name), (32, 32, 3), name)
    np.testing.assert_allclose(np.asarray(out), np.asarray(want), atol=1e-5)
    assert float(jnp.abs(out - x).mean()) > 0.1


@pytest.mark.parametrize("quality", [10, 50, 90])
def test_jpeg_matches_pil(quality):
    image = np.round((_shapes(1, 48)[0] + 1) * 127.5).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="jpeg", quality=quality)
    pil = np.asarray(Image.open(buffer)).astype(np.float32)
    ours = np.asarray(jpeg.jpeg_compress(jnp.asarray(image / 127.5 - 1, jnp.float32), quality))
    ours = (ours + 1) * 127.5
    error_vs_pil = np.abs(ours - pil).mean()
    compression_error = np.abs(image - pil).mean()
    assert compression_error > 1.0
    assert error_vs_pil < 0.3 * compression_error


def test_jpeg_error_falls_with_quality():
    image = jnp.asarray(_shapes(1, 32)[0])
    errors = [float(jnp.abs(jpeg.jpeg_compress(image, q) - image).mean()) for q in (5, 30, 95)]
    assert errors[0] > errors[1] > errors[2]


@pytest.fixture(scope="module")
def images():
    return jnp.asarray(_shapes(3, 32))


@pytest.mark.parametrize("stage", range(5))
def test_each_bsr_stage_changes_the_image_deterministically(images, stage):
    fn = jax.jit(jax.vmap(degradations.bsr_stages(degradations.BSRConfig())[stage]))
    keys = jax.random.split(jax.random.key(stage), 3)
    out = fn(keys, images)
    assert out.shape == images.shape
    assert float(jnp.abs(out - images).mean()) > 2e-3
    np.testing.assert_array_equal(np.asarray(fn(keys, images)), np.asarray(out))
    assert abs(float(out.mean() - images.mean())) < 0.05


@pytest.fixture(scope="module")
def bsr():
    return jax.jit(degradations.bsr_degrade, static_argnums=2)


def test_bsr_is_deterministic_and_in_range(images, bsr):
    out = bsr(jax.random.key(0), images, 8)
    assert out.shape == (3, 8, 8, 3)
    np.testing.assert_array_equal(np.asarray(bsr(jax.random.key(0), images, 8)), np.asarray(out))
    other = bsr(jax.random.key(1), images, 8)
    assert float(jnp.abs(other - out).mean()) > 1e-3
    assert float(out.min()) >= -1 and float(out.max()) <= 1
    reference = jax.image.resize(images, (3, 8, 8, 3), "cubic")
    for a, b in zip(np.asarray(reference), np.asarray(out), strict=True):
        assert abs(a.mean() - b.mean()) < 0.1
        assert 0.4 < b.std() / a.std() < 1.6
    assert float(jnp.abs(out - jnp.clip(reference, -1, 1)).mean()) > 0.01


def test_bad_ranges_are_refused():
    with pytest.raises(ValueError, match="blur_sigma"):
        degradations.BSRConfig(blur_sigma=(2.0, 1.0))
    with pytest.raises(ValueError, match="resample_scale"):
        degradations.BSRConfig(resample_scale=(0.5, 1.5))
    with pytest.raises(ValueError, match="sigma_range"):
        degradations.blur_degrade(jax.random.key(0), jnp.zeros((1, 8, 8, 3)), 4, (0.0, 1.0))
