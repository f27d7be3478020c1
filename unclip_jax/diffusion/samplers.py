"""Samplers as pure functions of a denoiser: DDPM ancestral, DDIM (η), and DDIM inversion.

`denoise(x_t, t) -> model output`, with t the ORIGINAL timesteps [B] (int32) of the schedule's
indices, is the only model interface. Each chain is one `lax.fori_loop` whose trip count is the
schedule's traced `num_steps`, so the whole chain is one compiled program that serves every step
count up to the schedule's padded length, with no host synchronisation per step.

Per-step noise is drawn from `fold_in(key, i)`, or taken from `noise` ([N, B, …], indexed by the
schedule index i) to reproduce another implementation's chain or to propagate moments exactly.
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from unclip_jax.diffusion import gaussian
from unclip_jax.diffusion.schedules import Schedule

Array = jax.Array
DenoiseFn = Callable[[Array, Array], Array]


def _step_noise(key: Array | None, noise: Array | None, index: Array, x: Array) -> Array:
    if noise is not None:
        return noise[index].astype(jnp.float32)
    return jax.random.normal(jax.random.fold_in(key, index), x.shape, jnp.float32)


def _reverse_step(
    denoise: DenoiseFn,
    schedule: Schedule,
    index: Array,
    x: Array,
    options: gaussian.ReverseOptions,
) -> gaussian.ReverseStep:
    """The model's reverse step at schedule index `index` (scalar) for the whole batch x: [B, …]."""
    batch_index = jnp.full((x.shape[0],), index, jnp.int32)
    output = denoise(x, schedule.timesteps[batch_index])
    return gaussian.p_mean_variance(schedule, output, x, batch_index, options)


def _reverse_loop(schedule: Schedule, x_T: Array, body: Callable[[Array, Array], Array]) -> Array:
    """Run body(i, x) for i = S−1 … 0."""

    def loop_body(k, x):
        index = schedule.num_steps - 1 - k
        return body(index, x)

    return jax.lax.fori_loop(0, schedule.num_steps, loop_body, x_T.astype(jnp.float32))


def ddpm_sample(
    denoise: DenoiseFn,
    schedule: Schedule,
    x_T: Array,
    key: Array | None = None,
    *,
    noise: Array | None = None,
    **options: Any,
) -> Array:
    """Ancestral sampling x_{i−1} = μ_θ(x_i) + σ_i z, no noise at i = 0. x_T: [B, …] → x0.

    `options`: the fields of `gaussian.ReverseOptions` (mean_type, var_type, clip,
    clip_percentile); var_type="analytic" reads the schedule's `x0_variance`.
    """
    options = gaussian.ReverseOptions(**options)
    if key is None and noise is None:
        raise ValueError("ddpm_sample needs a key or explicit per-step noise")

    def body(index, x):
        step = _reverse_step(denoise, schedule, index, x, options)
        z = _step_noise(key, noise, index, x)
        std = jnp.where(index > 0, jnp.exp(0.5 * step.log_variance), 0.0)
        return step.mean + std * z

    return _reverse_loop(schedule, x_T, body)


def ddim_sample(
    denoise: DenoiseFn,
    schedule: Schedule,
    x_T: Array,
    key: Array | None = None,
    *,
    eta: float | Array = 0.0,
    noise: Array | None = None,
    **options: Any,
) -> Array:
    """DDIM (Song et al. 2021, eq. 12): deterministic at η = 0, DDPM-like variance at η = 1.

    The mean's ε weight is √(1 − ᾱ_{i−1} − λ²) with λ² = η²β̃_i, and so is the noise's variance,
    except with var_type="analytic": then Analytic-DDIM's optimal variance for that mean (Bao et
    al. 2022), which adds noise even at η = 0 (none without a key or noise). Learned-variance
    channels, if any, are ignored. `options` as in `ddpm_sample`. x_T: [B, …] → x0.
    """
    options = gaussian.ReverseOptions(**options)

    def body(index, x):
        step = _reverse_step(denoise, schedule, index, x, options)
        alpha_bar = schedule.alphas_cumprod[index]
        alpha_bar_prev = schedule.alphas_cumprod_prev[index]
        sigma = (
            eta
            * jnp.sqrt((1.0 - alpha_bar_prev) / (1.0 - alpha_bar))
            * jnp.sqrt(1.0 - alpha_bar / alpha_bar_prev)
        )
        mean = (
            jnp.sqrt(alpha_bar_prev) * step.pred_x0
            + jnp.sqrt(jnp.maximum(1.0 - alpha_bar_prev - sigma**2, 0.0)) * step.pred_eps
        )
        if key is None and noise is None:
            return mean
        if options.var_type == "analytic":
            sigma = jnp.sqrt(gaussian.analytic_variance(schedule, index, sigma**2))
        z = _step_noise(key, noise, index, x)
        return mean + jnp.where(index > 0, sigma, 0.0) * z

    return _reverse_loop(schedule, x_T, body)


def ddim_invert(
    denoise: DenoiseFn,
    schedule: Schedule,
    x0: Array,
    *,
    mean_type: str = "eps",
    var_type: str = "fixed_small",
    fixed_point_iterations: int = 1,
) -> Array:
    """Deterministic DDIM inversion x0 → x at index S−1, where a DDIM sampler over the same
    schedule starts.

    Step i finds the x_i that the DDIM step i maps to the current x_{i−1}:
    x_i = √ᾱ_i (x_{i−1} − √(1−ᾱ_{i−1}) ε)/√ᾱ_{i−1} + √(1−ᾱ_i) ε with ε = ε_θ(x_i, t_i). Plain DDIM
    inversion (`fixed_point_iterations=0`) evaluates ε at x_{i−1}, a first-order error; each
    fixed-point iteration re-evaluates it at the current estimate of x_i (one more model call).
    x0: [B, …] → x_T: [B, …].
    """
    gaussian.check_prediction(mean_type)
    gaussian.check_variance(var_type)
    if fixed_point_iterations < 0:
        raise ValueError(f"fixed_point_iterations must be >= 0, got {fixed_point_iterations}")

    def body(index, x):
        batch_index = jnp.full((x.shape[0],), index, jnp.int32)
        t = schedule.timesteps[batch_index]
        alpha_bar = schedule.alphas_cumprod_prev[index]  # level of x
        alpha_bar_next = schedule.alphas_cumprod[index]

        def eps_at(x_next):
            mean_output, _ = gaussian.split_output(denoise(x_next, t), x_next, var_type)
            pred_x0 = gaussian.PREDICTIONS[mean_type](
                schedule, x_next, batch_index, mean_output.astype(jnp.float32)
            )
            return gaussian.eps_from_x0(schedule, x_next, batch_index, pred_x0)

        def step_up(eps):
            x0_here = (x - jnp.sqrt(1.0 - alpha_bar) * eps) / jnp.sqrt(alpha_bar)
            return jnp.sqrt(alpha_bar_next) * x0_here + jnp.sqrt(1.0 - alpha_bar_next) * eps

        x_next = step_up(eps_at(x))
        for _ in range(fixed_point_iterations):
            x_next = step_up(eps_at(x_next))
        return x_next

    return jax.lax.fori_loop(0, schedule.num_steps, body, x0.astype(jnp.float32))


SAMPLERS: dict[str, Callable[..., Array]] = {"ddpm": ddpm_sample, "ddim": ddim_sample}
