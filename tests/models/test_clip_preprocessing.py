"""CLIP preprocessing in JAX against Hugging Face's CLIPImageProcessor (PIL backend)."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unclip_jax.models.clip import CLIP, clip_config
from unclip_jax.models.clip_preprocessing import clip_preprocess

SIZE = 32
# (height, width): downsampling landscape and portrait, upsampling, already square.
SHAPES = [(48, 71), (90, 40), (20, 27), (32, 32)]


def _images(shape, rng):
    """Smooth random uint8 images (noise blurred by an upsampled coarse grid) plus fine noise."""
    coarse = rng.rand(2, shape[0] // 4 + 2, shape[1] // 4 + 2, 3)
    smooth = jax.image.resize(coarse, (2, *shape, 3), "linear")
    noisy = np.asarray(smooth) * 230 + rng.rand(2, *shape, 3) * 25
    return np.clip(noisy, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def reference():
    transformers = pytest.importorskip("transformers")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
    return CLIPImageProcessorPil(
        size={"shortest_edge": SIZE}, crop_size={"height": SIZE, "width": SIZE}
    ), transformers


@pytest.fixture(scope="module")
def embed():
    config = clip_config("tiny")
    model = CLIP(config)
    params = model.init(
        jax.random.key(0), jnp.zeros((1, 4), jnp.int32), jnp.zeros((1, SIZE, SIZE, 3))
    )
    return jax.jit(lambda x: model.apply(params, x, method=CLIP.encode_image)[0])


@pytest.mark.parametrize("shape", SHAPES)
def test_matches_clip_image_processor(shape, reference, embed):
    processor, _ = reference
    images = _images(shape, np.random.RandomState(sum(shape)))
    expected = processor(images=list(images), return_tensors="np")["pixel_values"]
    expected = expected.transpose(0, 2, 3, 1)  # NCHW -> NHWC
    ours = jax.jit(clip_preprocess, static_argnums=1)(jnp.asarray(images), SIZE)
    assert ours.shape == expected.shape == (2, SIZE, SIZE, 3)
    # PIL rounds its resize to 8 bits: at most ~1 level (1/255/std ≈ 0.015) apart.
    assert float(jnp.max(jnp.abs(ours - expected))) < 0.05
    a, b = embed(ours), embed(jnp.asarray(expected))
    cosine = jnp.sum(a * b, -1) / (jnp.linalg.norm(a, axis=-1) * jnp.linalg.norm(b, axis=-1))
    assert float(cosine.min()) >= 0.999


def test_float_input_in_minus_one_one_equals_uint8():
    images = _images((40, 56), np.random.RandomState(0))
    from_uint8 = clip_preprocess(jnp.asarray(images), SIZE)
    from_float = clip_preprocess(jnp.asarray(images, jnp.float32) / 127.5 - 1.0, SIZE)
    np.testing.assert_allclose(from_float, from_uint8, atol=1e-5)


def test_bad_inputs():
    with pytest.raises(ValueError, match=r"3 channels.*got 4"):
        clip_preprocess(jnp.zeros((1, 8, 8, 4), jnp.uint8), SIZE)
    with pytest.raises(ValueError, match=r"\[B, H, W, C\].*\(8, 8, 3\)"):
        clip_preprocess(jnp.zeros((8, 8, 3), jnp.uint8), SIZE)
    with pytest.raises(ValueError, match="uint8 or floating point"):
        clip_preprocess(jnp.zeros((1, 8, 8, 3), jnp.int32), SIZE)
