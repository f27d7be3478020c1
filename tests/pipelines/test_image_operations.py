"""unCLIP §3.1 variations and §3.2 interpolations from bipartite latents (z_i, x_T), on the tiny
random pipeline: η = 0 decodes the DDIM inversion deterministically (checked against the
decoder stage's own inversion and sampling), η > 0 varies it, the random-x_T modes keep their
earlier meaning, and bad values are refused in one line before any compute."""

import dataclasses

import jax
import numpy as np
import pytest

from unclip_jax.pipelines import image_operations
from unclip_jax.pipelines import images as pipeline_images
from unclip_jax.pipelines.unclip import NOISE_STREAM, UnCLIP

STEPS = 4
LOW = dict(decoder_steps=STEPS, decoder_guidance=1.0, upsample=False)  # unguided, 8 px


@pytest.fixture(scope="module")
def pipe(pipeline_dir) -> UnCLIP:
    return UnCLIP.load(pipeline_dir, num_devices=1)


@pytest.fixture(scope="module")
def sources() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (20, 24, 3), dtype=np.uint8) for _ in range(2)]


def _null_conditioning(pipe: UnCLIP, image: np.ndarray) -> tuple[dict, np.ndarray]:
    """The decoder's conditioning on the image's z_i and the null caption, and the image at the
    decoder's resolution in [-1, 1] [1, 8, 8, 3]."""
    z = pipe.encode_images([image])
    ids, mask = pipe.clip.tokenize([""])
    text_embed, states = pipe.clip.encode_text(ids, mask)
    caption = {"ids": ids, "mask": mask, "states": states, "text_embed": text_embed}
    cond = pipe.decoder.conditioning(z, caption, np.ones(1, bool))
    size = pipe.decoder.shape[0]
    x0 = pipeline_images.to_unit(pipeline_images.resize(pipeline_images.center_square(image), size))
    return cond, x0[None]


def _decode(pipe: UnCLIP, x_T, cond: dict) -> np.ndarray:
    """uint8 [B, 8, 8, 3]: the decoder stage's unguided DDIM η = 0 chain from x_T."""
    out = pipe.decoder.sample(x_T, cond, STEPS, 1.0, 0.0, jax.random.key(123))
    return pipeline_images.to_uint8(np.asarray(out))


def _close(a: np.ndarray, b: np.ndarray) -> bool:
    return np.abs(a.astype(int) - b.astype(int)).max() <= 1


def test_eta_zero_variations_are_the_reconstruction(pipe, sources):
    image = sources[0]
    cond, x0 = _null_conditioning(pipe, image)
    reference = _decode(pipe, pipe.decoder.invert(x0, cond, STEPS), cond)[0]
    variations = pipe.variations(image, n=3, seed=5, eta=0.0, **LOW)
    assert variations.shape == (3, 8, 8, 3)
    for v in variations:
        assert _close(v, reference)
    assert _close(pipe.reconstruct(image, seed=9, **LOW), reference)
    # Not any decode of z_i: a random x_T gives another image.
    fresh = pipe.variations(image, n=1, seed=5, x_T="random", **LOW)[0]
    assert not _close(fresh, reference)
    # Upsampled, the n copies stay equal (the upsamplers use one noise row for all).
    final = pipe.variations(image, n=3, seed=5, eta=0.0, decoder_steps=STEPS)
    assert final.shape == (3, 16, 16, 3)
    assert all(_close(f, final[0]) for f in final)


def test_eta_positive_variations_differ(pipe, sources):
    groups = pipe.variations_batch(sources, n=4, seed=1, eta=1.0, **LOW)
    assert groups.shape == (2, 4, 8, 8, 3)
    for group in groups:
        assert len({v.tobytes() for v in group}) == 4
    again = pipe.variations_batch(sources, n=4, seed=1, eta=1.0, **LOW)
    np.testing.assert_array_equal(again, groups)
    # The default η is VARIATION_ETA > 0, from the inverted x_T.
    default = pipe.variations_batch(sources, n=4, seed=1, **LOW)
    assert image_operations.VARIATION_ETA > 0
    if image_operations.VARIATION_ETA == 1.0:
        np.testing.assert_array_equal(default, groups)
    # A smaller η strays less from the η = 0 reconstruction.
    reconstruction = pipe.reconstruct_batch(sources, **LOW)[:, None].astype(float)
    gaps = {
        eta: np.mean((pipe.variations_batch(sources, 4, 1, eta=eta, **LOW) - reconstruction) ** 2)
        for eta in (0.1, 1.0)
    }
    assert 0 < gaps[0.1] < gaps[1.0]


def test_random_x_T_decodes_noise_row_k(pipe, sources):
    """x_T="random" is the earlier variations: variation k from noise row k of the seed, η 0."""
    image = sources[1]
    cond, _ = _null_conditioning(pipe, image)
    noise_key = jax.random.fold_in(jax.random.key(7), NOISE_STREAM)
    rows = np.arange(3, dtype=np.int32)
    x_T = pipe._noise(noise_key, rows, pipe.decoder.shape)
    cond3 = jax.tree.map(lambda v: np.repeat(np.asarray(v), 3, axis=0), cond)
    reference = _decode(pipe, x_T, cond3)
    variations = pipe.variations(image, n=3, seed=7, x_T="random", **LOW)
    for v, r in zip(variations, reference, strict=True):
        assert _close(v, r)
    assert len({v.tobytes() for v in variations}) == 3


def test_interpolation_end_frames_reproduce_the_inversions(pipe, sources):
    a, b = sources
    frames = pipe.interpolate(a, b, n=3, seed=2, **LOW)
    assert frames.shape == (3, 8, 8, 3)
    assert _close(frames[0], pipe.reconstruct(a, **LOW))
    assert _close(frames[-1], pipe.reconstruct(b, **LOW))
    assert not _close(frames[1], frames[0]) and not _close(frames[1], frames[-1])
    fixed = pipe.interpolate(a, b, n=3, seed=2, x_T="random", **LOW)
    assert not _close(fixed[0], frames[0])
    # The fixed draw is noise row 0: frame 0 is the first random-x_T variation of A.
    assert _close(fixed[0], pipe.variations(a, n=1, seed=2, x_T="random", **LOW)[0])


def test_slerp_with_norm_follows_the_norms():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(2, 4, 4, 3))
    b *= 3.0
    theta = np.linspace(0, 1, 5)
    path = image_operations.slerp_with_norm(a, b, theta)
    assert path.shape == (5, 4, 4, 3)
    np.testing.assert_allclose(path[[0, -1]], [a, b], atol=1e-12)
    norms = np.linalg.norm(path.reshape(5, -1), axis=1)
    expected = (1 - theta) * np.linalg.norm(a) + theta * np.linalg.norm(b)
    np.testing.assert_allclose(norms, expected, rtol=1e-12)
    # Directions move along the great circle: equal angles between consecutive frames.
    u = path.reshape(5, -1) / norms[:, None]
    angles = np.arccos(np.clip(np.sum(u[1:] * u[:-1], axis=1), -1, 1))
    np.testing.assert_allclose(angles, angles[0], rtol=1e-9)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda p, s: p.variations(s[0], eta=-0.5), "eta must be a finite number >= 0, got -0.5"),
        (lambda p, s: p.variations(s[0], eta=float("nan")), "eta must be a finite number >= 0"),
        (
            lambda p, s: p.variations(s[0], x_T="fresh"),
            r"x_T must be one of \['inverted', 'random'\], got 'fresh'",
        ),
        (lambda p, s: p.interpolate(s[0], s[1], eta="1"), "eta must be a finite number >= 0"),
        (lambda p, s: p.interpolate(s[0], s[1], x_T="fixed"), "x_T must be one of"),
        (lambda p, s: p.reconstruct(s[0], upsample="no"), "upsample must be True or False"),
    ],
)
def test_bad_values_are_refused_before_compute(pipe, sources, call, message):
    counts = pipe.compiled_programs()
    with pytest.raises(ValueError, match=message) as error:
        call(pipe, sources)
    assert "\n" not in str(error.value)
    assert pipe.compiled_programs() == counts


def test_ancestral_decoder_is_refused(pipe, sources, monkeypatch):
    ddpm = dataclasses.replace(pipe.decoder.diffusion, sampler="ddpm")
    monkeypatch.setattr(pipe.decoder, "diffusion", ddpm)
    for call in (
        lambda: pipe.variations(sources[0]),
        lambda: pipe.variations(sources[0], x_T="random", eta=0.5),
        lambda: pipe.interpolate(*sources),
    ):
        with pytest.raises(ValueError, match="this decoder's sampler is 'ddpm'"):
            call()
