"""The decoder stage with sampler="ddpm" takes the learned-variance DDPM steps: its chain equals a
hand-run loop over diffusers' `UnCLIPScheduler(variance_type="learned_range")` fed the same guided
model outputs and the same noise, over a schedule respaced as Improved DDPM respaces (sections).
And a stage whose settings and model disagree on the variance is refused in one line."""

import sys
from pathlib import Path
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import UnCLIPScheduler

sys.path.insert(0, str(Path(__file__).parents[1]))
from tiny_pipeline import CONTEXT, DECODER_MODEL, random_params

from unclip_jax.diffusion.schedules import cosine_betas, space_timesteps
from unclip_jax.models.unet import decoder_from_config
from unclip_jax.sampling.decoder import DecoderChain
from unclip_jax.sampling.settings import DiffusionSettings

B, SIZE, EMBED, STATES = 2, 8, 16, 32
SPACING = "10,10,5"  # Improved DDPM's section counts: 25 of the 1000 timesteps
PATCH = "diffusers.schedulers.scheduling_unclip.randn_tensor"


def decoder(out_channels: int):
    unet = {**DECODER_MODEL["unet"], "out_channels": out_channels}
    return decoder_from_config({**DECODER_MODEL, "unet": unet})


def inputs():
    keys = jax.random.split(jax.random.key(0), 3)
    image_embed = jax.random.normal(keys[0], (B, EMBED))
    caption = {
        "caption_states": jax.random.normal(keys[1], (B, CONTEXT, STATES)),
        "caption_embed": jax.random.normal(keys[2], (B, EMBED)),
        "caption_mask": jnp.arange(CONTEXT)[None] < jnp.array([[CONTEXT], [3]]),
    }
    return image_embed, caption


def reference_scheduler() -> UnCLIPScheduler:
    """diffusers' decoder scheduler (learned range, ε, x0 clipped to ±1) with float64 tables from
    the same cosine β, so that its float32 rounding of 1 − ᾱ near t = 0 is not what is measured
    (see tests/diffusion/test_karlo_scheduler.py)."""
    scheduler = UnCLIPScheduler(
        variance_type="learned_range", prediction_type="epsilon", clip_sample_range=1.0
    )
    scheduler.betas = torch.from_numpy(cosine_betas(1000))
    scheduler.alphas = 1.0 - scheduler.betas
    scheduler.alphas_cumprod = torch.cumprod(scheduler.alphas, dim=0)
    scheduler.one = scheduler.one.double()
    return scheduler


def test_ddpm_decoder_chain_equals_unclip_scheduler_loop():
    """25 guided steps (scale 3) of a random learned-variance decoder: our chain's images equal
    diffusers' loop within 1e-5 (the reference runs its step arithmetic in float64 on the float32
    model outputs; measured 1.1e-6). The guidance is written out here independently: the mean
    channels u + s (c − u), the variance channels of the conditional half."""
    model = decoder(6)
    image_embed, caption = inputs()
    params = random_params(
        model,
        jnp.zeros((1, SIZE, SIZE, 3)),
        jnp.zeros((1,), jnp.int32),
        image_embed[:1],
        **{k: v[:1] for k, v in caption.items()},
        seed=7,
    )
    settings = DiffusionSettings(sampler="ddpm", learned_variance=True, clip="static")
    chain = DecoderChain(model, settings)
    cond = chain.conditioning(image_embed, caption)
    scale = 3.0
    key = jax.random.key(1)
    x_T = jax.random.normal(jax.random.key(2), (B, SIZE, SIZE, 3))
    ours = np.asarray(chain.sample(params, x_T, cond, SPACING, scale, 0.0, key))

    null = {**cond, "drop_image": jnp.ones((B,), bool), "drop_caption": jnp.ones((B,), bool)}
    apply = jax.jit(lambda x, t, c: chain.apply(params, x, t, c))

    def guided(x: np.ndarray, t: int) -> np.ndarray:
        ts = jnp.full((B,), t, jnp.int32)
        c = np.asarray(apply(jnp.asarray(x, jnp.float32), ts, cond))
        u = np.asarray(apply(jnp.asarray(x, jnp.float32), ts, null))
        return np.concatenate([u[..., :3] + scale * (c[..., :3] - u[..., :3]), c[..., 3:]], -1)

    kept = space_timesteps(1000, SPACING)
    assert len(kept) == 25 and kept[0] == 0 and kept[-1] == 999
    scheduler = reference_scheduler()
    x = np.asarray(x_T, np.float64)
    fractions = []  # the learned interpolation between log β̃ (0) and log β (1), per step
    for index in reversed(range(len(kept))):
        t = int(kept[index])
        prev = int(kept[index - 1]) if index > 0 else -1
        noise = np.asarray(jax.random.normal(jax.random.fold_in(key, index), x.shape), np.float64)
        output = guided(x, t).astype(np.float64)
        fractions.append((output[..., 3:] + 1.0) / 2.0)
        drawn = torch.from_numpy(noise.transpose(0, 3, 1, 2).copy())
        with mock.patch(PATCH, lambda shape, drawn=drawn, **_: drawn):
            step = scheduler.step(
                torch.from_numpy(output.transpose(0, 3, 1, 2).copy()),
                t,
                torch.from_numpy(x.transpose(0, 3, 1, 2).copy()),
                prev_timestep=prev,
            )
        x = step.prev_sample.numpy().transpose(0, 2, 3, 1)
    assert np.abs(ours).max() > 0.1 and np.abs(ours - np.asarray(x_T)).max() > 0.1
    # The variance channels put the steps' variance well away from β̃ and vary it (0.64 ± 0.10).
    assert np.mean(fractions) > 0.3 and np.std(fractions) > 0.05
    np.testing.assert_allclose(ours, x, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "out_channels, learned, message",
    [
        (
            3,
            True,
            "var_type 'learned_range' needs 6 output channels for 3-channel images; "
            "the decoder has 3",
        ),
        (
            6,
            False,
            "var_type 'fixed_small' needs 3 output channels for 3-channel images; "
            "the decoder has 6",
        ),
    ],
)
def test_variance_settings_and_model_must_agree(out_channels, learned, message):
    settings = DiffusionSettings(sampler="ddpm", learned_variance=learned)
    with pytest.raises(ValueError) as error:
        DecoderChain(decoder(out_channels), settings)
    assert str(error.value) == message
