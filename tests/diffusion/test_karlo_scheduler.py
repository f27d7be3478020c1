"""Karlo's sampling rule through our core equals diffusers' `UnCLIPScheduler`, step by step and
over whole chains, for the three stage settings Karlo uses (and a clip range our core lacks)."""

from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import UnCLIPScheduler

from unclip_jax.diffusion.karlo import KarloScheduler, karlo_timesteps
from unclip_jax.diffusion.schedules import cosine_betas

# stage -> (UnCLIPScheduler config, Karlo's step count, example shape [B, …, C])
STAGES = {
    "prior": (
        dict(variance_type="fixed_small_log", prediction_type="sample", clip_sample_range=5.0),
        25,
        (3, 8),
    ),
    "decoder": (
        dict(variance_type="learned_range", prediction_type="epsilon", clip_sample_range=1.0),
        25,
        (2, 4, 4, 3),
    ),
    "super_res": (
        dict(variance_type="fixed_small_log", prediction_type="epsilon", clip_sample_range=1.0),
        7,
        (2, 4, 4, 3),
    ),
    "unclipped": (
        dict(variance_type="learned_range", prediction_type="sample", clip_sample=False),
        10,
        (2, 6),
    ),
}
PATCH = "diffusers.schedulers.scheduling_unclip.randn_tensor"


def reference_scheduler(**config) -> UnCLIPScheduler:
    """diffusers' scheduler with its tables in float64, β from the same cosine.

    Its float32 tables carry rounding that the comparison would otherwise measure: 1 − ᾱ_0 ≈ 4e-5
    is off by ~1e-3 relative (the posterior variance of the last noisy step with it), and
    α = 1 − (1 − ᾱ_t/ᾱ_prev) cancels at t = 999 (ᾱ ratio ≈ 2e-6, √α off by ~3%).
    `test_cosine_betas_match` checks the β themselves.
    """
    scheduler = UnCLIPScheduler(**config)
    scheduler.betas = torch.from_numpy(cosine_betas(scheduler.config.num_train_timesteps))
    scheduler.alphas = 1.0 - scheduler.betas
    scheduler.alphas_cumprod = torch.cumprod(scheduler.alphas, dim=0)
    scheduler.one = scheduler.one.double()
    return scheduler


def test_cosine_betas_match():
    np.testing.assert_allclose(cosine_betas(1000), UnCLIPScheduler().betas.numpy(), rtol=1e-6)


def _channels_first(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.moveaxis(x, -1, 1).copy()) if x.ndim == 4 else torch.from_numpy(x)


def _channels_last(x: torch.Tensor) -> np.ndarray:
    x = x.numpy()
    return np.moveaxis(x, 1, -1) if x.ndim == 4 else x


def _model_output(rng, shape, config, t):
    """A model output that exercises clipping: x0 around ±clip range, or ε giving large x0."""
    scale = 6.0 if config["prediction_type"] == "sample" else 1.5
    output = scale * rng.standard_normal(shape)
    if config["variance_type"] == "learned_range":
        output = np.concatenate([output, np.tanh(rng.standard_normal(shape))], axis=-1)
    return output.astype(np.float32)


def _diffusers_step(scheduler, output, t, x, prev, noise):
    """diffusers' step in float64 (inputs promoted), the noise given."""
    output, x, noise = (_channels_first(a.astype(np.float64)) for a in (output, x, noise))
    with mock.patch(PATCH, lambda shape, **_: noise):
        out = scheduler.step(output, t, x, prev_timestep=prev)
    return _channels_last(out.prev_sample)


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_timesteps_match(stage):
    config, steps, _ = STAGES[stage]
    scheduler = UnCLIPScheduler(**config)
    scheduler.set_timesteps(steps)
    np.testing.assert_array_equal(karlo_timesteps(1000, steps)[::-1], scheduler.timesteps.numpy())


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_step_mean_and_std_match_unclip_scheduler(stage):
    """At every step of the stage's timetable: mean = diffusers' step with zero noise, std = the
    step with unit noise minus the mean (0 at the last step, as our samplers apply it)."""
    config, steps, shape = STAGES[stage]
    scheduler = reference_scheduler(**config)
    scheduler.set_timesteps(steps)
    ours = KarloScheduler.from_diffusers(scheduler.config)
    schedule = ours.schedule(steps)
    step = jax.jit(ours.step)
    rng = np.random.default_rng(0)
    timesteps = scheduler.timesteps.numpy()
    clipped = 0
    for i, t in enumerate(timesteps):
        prev = None if i + 1 == len(timesteps) else int(timesteps[i + 1])
        x = rng.standard_normal(shape).astype(np.float32)
        output = _model_output(rng, shape, config, t)
        zeros, ones = np.zeros(shape), np.ones(shape)
        mean = _diffusers_step(scheduler, output, int(t), x, prev, zeros)
        std = _diffusers_step(scheduler, output, int(t), x, prev, ones) - mean
        index = np.full((shape[0],), steps - 1 - i, np.int32)
        got = step(schedule, output, x, index, np.full((shape[0],), t))
        got_std = np.exp(0.5 * np.asarray(got.log_variance)) if index[0] > 0 else 0.0
        scale = np.abs(mean).max()
        np.testing.assert_allclose(got.mean, mean, atol=2e-5 * max(scale, 1.0), rtol=1e-4)
        np.testing.assert_allclose(got_std, std, atol=1e-6, rtol=1e-4)
        if config.get("clip_sample", True):
            clipped += int(np.any(np.abs(got.pred_x0) >= config["clip_sample_range"] - 1e-6))
    if config.get("clip_sample", True):
        assert clipped > steps // 2  # the clipping was exercised


def _affine_model(x: np.ndarray, t: np.ndarray, channels: int, var: bool) -> np.ndarray:
    """A fixed nonlinear 'model' shared by both chains: output [B, …, C or 2C]."""
    out = np.sin(1.3 * x + 0.002 * t.reshape((-1,) + (1,) * (x.ndim - 1)))
    return np.concatenate([out, np.tanh(x)], axis=-1) if var else out


@pytest.mark.parametrize("stage", ["prior", "decoder", "super_res"])
def test_whole_chain_with_diffusers_noise(stage):
    """Our ancestral chain over Karlo's timetable, fed the noise diffusers draws, ends where
    diffusers' loop ends (within 1e-4)."""
    config, steps, shape = STAGES[stage]
    scheduler = reference_scheduler(**config)
    scheduler.set_timesteps(steps)
    var = config["variance_type"] == "learned_range"
    generator = torch.Generator().manual_seed(0)
    x_T = torch.randn(_channels_first(np.zeros(shape, np.float32)).shape, generator=generator)
    drawn = []

    def record(shape, generator=None, **kwargs):
        noise = torch.randn(shape, generator=generator)
        drawn.append(_channels_last(noise))
        return noise

    x = x_T
    with mock.patch(PATCH, record):
        timesteps = scheduler.timesteps
        for i, t in enumerate(timesteps):
            prev = None if i + 1 == len(timesteps) else timesteps[i + 1]
            x_np = _channels_last(x)
            output = _affine_model(x_np, np.full((shape[0],), int(t)), shape[-1], var)
            x = scheduler.step(
                _channels_first(output.astype(np.float32)), t, x, prev, generator=generator
            ).prev_sample
    expected = _channels_last(x)
    # diffusers draws noise at steps t > 0 only, in chain order: index i ← drawn[S − 1 − i].
    noise = np.stack([np.zeros(shape, np.float32), *drawn[::-1]])

    ours = KarloScheduler.from_diffusers(scheduler.config)

    def denoise(x, t):
        out = jnp.sin(1.3 * x + 0.002 * t.reshape((-1,) + (1,) * (x.ndim - 1)))
        return jnp.concatenate([out, jnp.tanh(x)], axis=-1) if var else out

    result = ours.sample(denoise, steps, jnp.asarray(_channels_last(x_T)), noise=jnp.asarray(noise))
    assert len(drawn) == steps - 1
    np.testing.assert_allclose(result, expected, atol=1e-4, rtol=0)


def test_errors_name_the_bad_value():
    with pytest.raises(ValueError, match=r"variance_type .* got 'fixed_large'"):
        KarloScheduler.from_diffusers({"variance_type": "fixed_large"})
    with pytest.raises(ValueError, match=r"prediction_type .* got 'v_prediction'"):
        KarloScheduler.from_diffusers({"prediction_type": "v_prediction"})
    with pytest.raises(ValueError, match=r"beta_schedule .* got 'linear'"):
        KarloScheduler.from_diffusers({"beta_schedule": "linear"})
    with pytest.raises(ValueError, match="step count >= 2, got 1"):
        karlo_timesteps(1000, 1)
    with pytest.raises(ValueError, match="clip_range must be > 0 or None, got -1"):
        KarloScheduler(clip_range=-1.0)
    with pytest.raises(ValueError, match=r"clip_range 2.0 needs x0 prediction"):
        KarloScheduler.from_diffusers({"prediction_type": "epsilon", "clip_sample_range": 2.0})
