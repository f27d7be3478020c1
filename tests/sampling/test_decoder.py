"""Decoder and upsampler sampling: guidance as one batched model call per step, one compiled
program across embeddings / captions / keys / scales / step counts, the null half really
unconditional, full-size upsampling, and arguments checked before compiling."""

import dataclasses
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parents[1]))
from tiny_pipeline import DECODER_MODEL, UPSAMPLER_MODEL, random_params

from unclip_jax.models.caption_transformer import CaptionTransformerConfig
from unclip_jax.models.unet import Decoder, UNetConfig, upsampler_from_config
from unclip_jax.sampling import decoder as decoder_sampling
from unclip_jax.sampling.settings import DiffusionSettings

B, SIZE, IMG_DIM, LENGTH = 2, 8, 8, 5
# The pipeline's tiny decoder U-Net with mid-block attention, captions from its own transformer.
DECODER = Decoder(
    dataclasses.replace(UNetConfig(**DECODER_MODEL["unet"]), mid_attention=True),
    context_dim=8,
    caption_source="transformer",
    caption_transformer=CaptionTransformerConfig(
        vocab_size=16, max_length=LENGTH, width=8, layers=1, heads=2
    ),
)
UPSAMPLER = upsampler_from_config(UPSAMPLER_MODEL)


def caption(seed):
    rng = np.random.default_rng(seed)
    ids = jnp.asarray(rng.integers(1, 16, (B, LENGTH)), jnp.int32)
    return {"caption_ids": ids, "caption_mask": jnp.arange(LENGTH)[None] < jnp.array([[3], [5]])}


def embed(seed):
    return jax.random.normal(jax.random.key(seed), (B, IMG_DIM))


class CountingSampler(decoder_sampling.DecoderChain):
    """Records the input shape of every model call made while tracing the chain."""

    def __init__(self, *args, **kwargs):
        self.calls = []
        super().__init__(*args, **kwargs)

    def apply(self, params, x, t, cond):
        self.calls.append((x.shape, t.shape, cond["image_embed"].shape))
        return super().apply(params, x, t, cond)


@pytest.fixture(scope="module")
def decoder_run():
    x = jnp.zeros((1, SIZE, SIZE, 3))
    # Every leaf drawn from N(0, 0.2²), zero-initialised layers included (from eval_shape:
    # compiling the U-Net's initialiser would take longer than the tests).
    params = random_params(
        DECODER,
        x,
        jnp.zeros((1,), jnp.int32),
        jnp.zeros((1, IMG_DIM)),
        caption_ids=jnp.zeros((1, LENGTH), jnp.int32),
        seed=1,
    )
    settings = DiffusionSettings(sampler="ddim", learned_variance=True, max_steps=16)
    sampler = CountingSampler(DECODER, settings)

    def run(z, cap, key=0, steps=4, scale=3.0, eta=0.0):
        return np.asarray(
            sampler(
                params,
                z,
                jax.random.key(key),
                image_size=SIZE,
                caption=cap,
                steps=steps,
                guidance_scale=scale,
                eta=eta,
            )
        )

    first = run(embed(0), caption(0))
    return sampler, run, first


def test_guidance_is_one_batched_call_per_step(decoder_run):
    sampler, _, first = decoder_run
    assert first.shape == (B, SIZE, SIZE, 3) and np.isfinite(first).all()
    # The chain body is traced once: a single model call on the doubled batch.
    assert sampler.calls == [((2 * B, SIZE, SIZE, 3), (2 * B,), (2 * B, IMG_DIM))]


def test_new_embeddings_keys_scales_steps_reuse_the_program(decoder_run):
    sampler, run, first = decoder_run
    second = run(embed(5), caption(6), key=1, steps=9, scale=1.5, eta=0.5)
    again = run(embed(0), caption(0))
    assert sampler.compiled_programs() == 1
    assert len(sampler.calls) == 1
    np.testing.assert_array_equal(again, first)  # deterministic for a key
    assert not np.allclose(second, first)


def test_scale_zero_is_unconditional_and_scale_one_is_conditional(decoder_run):
    _, run, _ = decoder_run
    base = run(embed(0), caption(0), scale=0.0)
    other = run(embed(7), caption(8), scale=0.0)
    np.testing.assert_allclose(other, base, atol=1e-5)  # both halves' nulls: no conditioning
    cond_a = run(embed(0), caption(0), scale=1.0)
    cond_b = run(embed(7), caption(0), scale=1.0)
    assert np.abs(cond_a - cond_b).max() > 1e-3
    assert np.abs(cond_a - base).max() > 1e-3


def test_decoder_arguments_checked_before_compiling(decoder_run):
    sampler, run, _ = decoder_run
    with pytest.raises(ValueError, match="caption_ids"):
        run(embed(0), None)
    with pytest.raises(ValueError, match="guidance_scale"):
        run(embed(0), caption(0), scale=-1.0)
    with pytest.raises(ValueError, match="output channels"):
        decoder_sampling.DecoderChain(DECODER, DiffusionSettings(learned_variance=False))
    assert sampler.compiled_programs() == 1


@pytest.fixture(scope="module")
def upsampler_run():
    x = jnp.zeros((1, 8, 8, 3))
    params = random_params(UPSAMPLER, x, x, jnp.zeros((1,), jnp.int32), seed=2)
    sampler = decoder_sampling.UpsamplerChain(UPSAMPLER, DiffusionSettings(max_steps=32))
    return sampler, params


def test_upsampler_runs_full_size_with_one_program(upsampler_run):
    sampler, params = upsampler_run
    low = jax.random.uniform(jax.random.key(3), (B, 8, 8, 3), minval=-1, maxval=1)
    high = np.asarray(sampler(params, low, jax.random.key(0), size=32, steps=15))
    assert high.shape == (B, 32, 32, 3) and np.isfinite(high).all()
    assert np.abs(high).max() <= 1.0 + 1e-6  # static clipping of x0 keeps the output in range
    other = np.asarray(sampler(params, -low, jax.random.key(1), size=32, steps=27, eta=1.0))
    assert not np.allclose(other, high)
    assert sampler.compiled_programs() == 1
    with pytest.raises(ValueError, match="noise_level"):
        sampler(params, low, jax.random.key(0), size=32, noise_level=100)
    with pytest.raises(ValueError, match="low_res"):
        sampler(params, low, jax.random.key(0), size=4)
