"""The Gaussian diffusion process: forward noising, posteriors, and the model's reverse step.

x_i = √ᾱ_i x0 + √(1 − ᾱ_i) ε. Indices i address a `Schedule` (possibly respaced). Models predict
ε, x0, or v = √ᾱ ε − √(1 − ᾱ) x0 (Salimans & Ho 2022), and either use a fixed variance or learn
it as an interpolation between β̃ and β in the log domain (Nichol & Dhariwal 2021, eq. 15).
All arithmetic is float32.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import struct

from unclip_jax.diffusion.schedules import Schedule

Array = jax.Array


def extract(table: Array, index: Array, like: Array) -> Array:
    """table[index] broadcast against `like`. table: [N], index: [B] → [B, 1, …, 1]."""
    values = jnp.take(table, index, axis=0).astype(jnp.float32)
    return values.reshape(index.shape + (1,) * (like.ndim - index.ndim))


def q_sample(schedule: Schedule, x0: Array, index: Array, noise: Array) -> Array:
    """Sample x_i ~ q(x_i | x0). x0, noise: [B, …], index: [B]."""
    return (
        extract(schedule.sqrt_alphas_cumprod, index, x0) * x0
        + extract(schedule.sqrt_one_minus_alphas_cumprod, index, x0) * noise
    )


def q_posterior(schedule: Schedule, x0: Array, x_t: Array, index: Array) -> tuple[Array, Array]:
    """Mean and log-variance of q(x_{i−1} | x_i, x0)."""
    mean = (
        extract(schedule.posterior_mean_coef1, index, x_t) * x0
        + extract(schedule.posterior_mean_coef2, index, x_t) * x_t
    )
    log_variance = extract(schedule.posterior_log_variance_clipped, index, x_t)
    return mean, jnp.broadcast_to(log_variance, x_t.shape)


def x0_from_eps(schedule: Schedule, x_t: Array, index: Array, eps: Array) -> Array:
    return (
        extract(schedule.sqrt_recip_alphas_cumprod, index, x_t) * x_t
        - extract(schedule.sqrt_recipm1_alphas_cumprod, index, x_t) * eps
    )


def eps_from_x0(schedule: Schedule, x_t: Array, index: Array, x0: Array) -> Array:
    return (extract(schedule.sqrt_recip_alphas_cumprod, index, x_t) * x_t - x0) / extract(
        schedule.sqrt_recipm1_alphas_cumprod, index, x_t
    )


def x0_from_v(schedule: Schedule, x_t: Array, index: Array, v: Array) -> Array:
    return (
        extract(schedule.sqrt_alphas_cumprod, index, x_t) * x_t
        - extract(schedule.sqrt_one_minus_alphas_cumprod, index, x_t) * v
    )


def v_from_x0_eps(schedule: Schedule, x0: Array, index: Array, eps: Array) -> Array:
    return (
        extract(schedule.sqrt_alphas_cumprod, index, x0) * eps
        - extract(schedule.sqrt_one_minus_alphas_cumprod, index, x0) * x0
    )


# What the model's mean channels predict → the x0 it implies.
PREDICTIONS: dict[str, Callable[[Schedule, Array, Array, Array], Array]] = {
    "eps": x0_from_eps,
    "x0": lambda schedule, x_t, index, x0: x0,
    "v": x0_from_v,
}


def check_prediction(mean_type: str) -> None:
    if mean_type not in PREDICTIONS:
        raise ValueError(f"prediction type must be one of {sorted(PREDICTIONS)}, got {mean_type!r}")


def _dynamic_threshold(x0: Array, percentile: float) -> Array:
    """Imagen's dynamic thresholding: s = max(1, quantile(|x0|, p)) per example; x0 ← clip/s."""
    flat = jnp.abs(x0.reshape(x0.shape[0], -1))
    scale = jnp.maximum(jnp.quantile(flat, percentile, axis=1), 1.0)
    scale = scale.reshape((-1,) + (1,) * (x0.ndim - 1))
    return jnp.clip(x0, -scale, scale) / scale


CLIPPING: dict[str, Callable[[Array, float], Array]] = {
    "none": lambda x0, percentile: x0,
    "static": lambda x0, percentile: jnp.clip(x0, -1.0, 1.0),
    "dynamic": _dynamic_threshold,
}


def check_clipping(clip: str) -> None:
    if clip not in CLIPPING:
        raise ValueError(f"clip must be one of {sorted(CLIPPING)}, got {clip!r}")


def _fixed_small(schedule, index, x_t, variance_output):
    log_variance = extract(schedule.posterior_log_variance_clipped, index, x_t)
    return jnp.broadcast_to(log_variance, x_t.shape)


def _fixed_large(schedule, index, x_t, variance_output):
    log_variance = extract(schedule.large_log_variance, index, x_t)
    return jnp.broadcast_to(log_variance, x_t.shape)


def _learned_range(schedule, index, x_t, variance_output):
    # Model output v ∈ [−1, 1] interpolates log β̃ (min) and log β (max).
    min_log = extract(schedule.posterior_log_variance_clipped, index, x_t)
    max_log = extract(schedule.log_betas, index, x_t)
    fraction = (variance_output.astype(jnp.float32) + 1.0) / 2.0
    return fraction * max_log + (1.0 - fraction) * min_log


VARIANCES: dict[str, Callable[[Schedule, Array, Array, Array | None], Array]] = {
    "fixed_small": _fixed_small,
    "fixed_large": _fixed_large,
    "learned_range": _learned_range,
}


def check_variance(var_type: str) -> None:
    if var_type not in VARIANCES:
        raise ValueError(f"variance type must be one of {sorted(VARIANCES)}, got {var_type!r}")


def output_channels(channels: int, var_type: str) -> int:
    """Channels a model must output for `channels` data channels (2× with learned variance)."""
    return 2 * channels if var_type == "learned_range" else channels


@struct.dataclass
class ReverseStep:
    """p(x_{i−1} | x_i) and the model's implied predictions; every field [B, …]."""

    mean: Array
    log_variance: Array
    pred_x0: Array
    pred_eps: Array


def split_output(model_output: Array, x_t: Array, var_type: str) -> tuple[Array, Array | None]:
    """(mean channels, variance channels or None); learned variance doubles the last axis."""
    if var_type == "learned_range":
        if model_output.shape[-1] != 2 * x_t.shape[-1]:
            raise ValueError(
                f"learned variance needs {2 * x_t.shape[-1]} output channels, "
                f"got model output {model_output.shape}"
            )
        return jnp.split(model_output, 2, axis=-1)
    if model_output.shape != x_t.shape:
        raise ValueError(f"model output {model_output.shape} must match x_t {x_t.shape}")
    return model_output, None


def p_mean_variance(
    schedule: Schedule,
    model_output: Array,
    x_t: Array,
    index: Array,
    *,
    mean_type: str = "eps",
    var_type: str = "fixed_small",
    clip: str = "none",
    clip_percentile: float = 0.995,
) -> ReverseStep:
    """The reverse step implied by a model output at x_t (index [B])."""
    mean_output, variance_output = split_output(model_output, x_t, var_type)
    mean_output = mean_output.astype(jnp.float32)
    pred_x0 = PREDICTIONS[mean_type](schedule, x_t, index, mean_output)
    pred_x0 = CLIPPING[clip](pred_x0, clip_percentile)
    mean, _ = q_posterior(schedule, pred_x0, x_t, index)
    return ReverseStep(
        mean=mean,
        log_variance=VARIANCES[var_type](schedule, index, x_t, variance_output),
        pred_x0=pred_x0,
        pred_eps=eps_from_x0(schedule, x_t, index, pred_x0),
    )
