"""The Gaussian diffusion process: forward noising, posteriors, and the model's reverse step.

x_i = √ᾱ_i x0 + √(1 − ᾱ_i) ε. Indices i address a `Schedule` (possibly respaced). Models predict
ε, x0, or v = √ᾱ ε − √(1 − ᾱ) x0 (Salimans & Ho 2022), and either use a fixed variance or learn
it as an interpolation between β̃ and β in the log domain (Nichol & Dhariwal 2021, eq. 15),
or take Analytic-DPM's optimal variance (Bao et al. 2022) from the schedule's `x0_variance`,
which a model's Γ table implies. All arithmetic is float32.
"""

import dataclasses
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


def analytic_variance(schedule: Schedule, index: Array, lambda_sq: Array | None = None) -> Array:
    """Analytic-DPM's optimal variance of the step from index `index` (any shape) of a possibly
    respaced chain (Bao et al. 2022, Theorem 1 with the estimate of eq. 8):

        σ*² = λ² + (√(β̄_i/α_i) − √(β̄_{i−1} − λ²))² (1 − Γ_i) = λ² + c² · v_i,

    β̄ = 1 − ᾱ, α_i = ᾱ_i/ᾱ_{i−1}, for the step whose mean is √ᾱ_{i−1} x̂0 + √(β̄_{i−1} − λ²) ε̂ and
    whose forward posterior has variance λ² (default β̃_i, DDPM's; η²β̃_i for DDIM). Written with
    c, that mean's coefficient of x0, and v_i = β̄_i (1 − Γ_i)/ᾱ_i = E Var(x0 | x_i)/d, the
    schedule's `x0_variance` (from the model's Γ table, clipped to Theorem 2's bounds), because
    1 − Γ_i is lost in float32 where ᾱ_i is small.
    """
    if schedule.x0_variance is None:
        raise ValueError(
            "var_type 'analytic' needs a schedule made with the model's Γ table: "
            "make_schedule(..., eps_sq_norm=Γ), which sets its x0_variance"
        )
    x0_variance = jnp.take(schedule.x0_variance, index)
    if lambda_sq is None:
        coef = jnp.take(schedule.posterior_mean_coef1, index)
        return jnp.take(schedule.posterior_variance, index) + coef**2 * x0_variance
    alpha_bar = jnp.take(schedule.alphas_cumprod, index)
    alpha_bar_prev = jnp.take(schedule.alphas_cumprod_prev, index)
    # β̄_i and β̄_{i−1} from the host's float64 tables (1 − ᾱ loses digits in float32 near 1).
    one_minus = jnp.square(jnp.take(schedule.sqrt_one_minus_alphas_cumprod, index))
    previous = jnp.take(schedule.sqrt_one_minus_alphas_cumprod, jnp.maximum(index - 1, 0))
    one_minus_prev = jnp.where(index > 0, jnp.square(previous), 0.0)
    lambda_sq_kept = jnp.minimum(lambda_sq, one_minus_prev)  # the mean's ε weight ≥ 0
    # c = √ᾱ_{i−1} − √(β̄_{i−1} − λ²) √(ᾱ_i/β̄_i), as (a² − b²)/(a + b) with ᾱ_{i−1} − ᾱ_i =
    # ᾱ_{i−1} β_i: no cancellation where steps are short.
    root_sum = jnp.sqrt(alpha_bar_prev) + jnp.sqrt(
        (one_minus_prev - lambda_sq_kept) * alpha_bar / one_minus
    )
    difference = alpha_bar_prev * jnp.take(schedule.betas, index) + lambda_sq_kept * alpha_bar
    coef = difference / (one_minus * root_sum)
    return lambda_sq + coef**2 * x0_variance


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


def _analytic(schedule, index, x_t, variance_output):
    # Floored: at index 0 (where samplers add no noise) σ*² may be 0.
    variance = jnp.maximum(analytic_variance(schedule, index), 1e-20)
    log_variance = jnp.log(variance).reshape(index.shape + (1,) * (x_t.ndim - index.ndim))
    return jnp.broadcast_to(log_variance, x_t.shape)


VARIANCES: dict[str, Callable[[Schedule, Array, Array, Array | None], Array]] = {
    "fixed_small": _fixed_small,
    "fixed_large": _fixed_large,
    "learned_range": _learned_range,
    "analytic": _analytic,  # reads the schedule's x0_variance
}


def check_variance(var_type: str) -> None:
    if var_type not in VARIANCES:
        raise ValueError(f"variance type must be one of {sorted(VARIANCES)}, got {var_type!r}")


@dataclasses.dataclass(frozen=True)
class ReverseOptions:
    """How a model output defines the reverse step, checked once when made (before anything is
    traced); the samplers take its fields as keyword arguments."""

    mean_type: str = "eps"  # what the mean channels predict: or "x0", "v"
    var_type: str = "fixed_small"  # or "fixed_large", "learned_range", "analytic"
    clip: str = "none"  # clipping of the predicted x0: or "static", "dynamic"
    clip_percentile: float = 0.995  # the quantile of |x0| that "dynamic" scales to 1

    def __post_init__(self):
        check_prediction(self.mean_type)
        check_variance(self.var_type)
        check_clipping(self.clip)


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


def predicted_eps(
    schedule: Schedule, x_t: Array, index: Array, mean_output: Array, mean_type: str
) -> Array:
    """The ε that the mean channels imply (unclipped; ε-models' own output unchanged)."""
    mean_output = mean_output.astype(jnp.float32)
    if mean_type == "eps":
        return mean_output
    return eps_from_x0(
        schedule, x_t, index, PREDICTIONS[mean_type](schedule, x_t, index, mean_output)
    )


def p_mean_variance(
    schedule: Schedule,
    model_output: Array,
    x_t: Array,
    index: Array,
    options: ReverseOptions,
) -> ReverseStep:
    """The reverse step implied by a model output at x_t (index [B])."""
    mean_output, variance_output = split_output(model_output, x_t, options.var_type)
    mean_output = mean_output.astype(jnp.float32)
    pred_x0 = PREDICTIONS[options.mean_type](schedule, x_t, index, mean_output)
    pred_x0 = CLIPPING[options.clip](pred_x0, options.clip_percentile)
    mean, _ = q_posterior(schedule, pred_x0, x_t, index)
    log_variance = VARIANCES[options.var_type](schedule, index, x_t, variance_output)
    return ReverseStep(
        mean=mean,
        log_variance=log_variance,
        pred_x0=pred_x0,
        pred_eps=eps_from_x0(schedule, x_t, index, pred_x0),
    )
