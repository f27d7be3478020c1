"""Training losses: MSE on ε, x0 or v; the hybrid loss for learned variances; the VLB terms.

L_hybrid = L_simple + λ·L_vlb with the VLB seeing the mean through a stop-gradient (Nichol &
Dhariwal 2021, §3.1); L_vlb = T·L_t for a uniformly drawn t, in bits per dimension.
"""

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

from unclip_jax.diffusion import gaussian
from unclip_jax.diffusion.schedules import Schedule

Array = jax.Array


def mean_flat(x: Array) -> Array:
    """Mean over every axis but the first. [B, …] → [B]."""
    return jnp.mean(x, axis=tuple(range(1, x.ndim)))


def normal_kl(mean1: Array, logvar1: Array, mean2: Array, logvar2: Array) -> Array:
    """KL(N(mean1, e^logvar1) ‖ N(mean2, e^logvar2)), elementwise, in nats."""
    return 0.5 * (
        -1.0
        + logvar2
        - logvar1
        + jnp.exp(logvar1 - logvar2)
        + jnp.square(mean1 - mean2) * jnp.exp(-logvar2)
    )


def approx_standard_normal_cdf(x: Array) -> Array:
    """Φ(x) by the tanh approximation (as in the DDPM and ADM likelihoods)."""
    return 0.5 * (1.0 + jnp.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def standard_normal_cdf(x: Array) -> Array:
    """Φ(x), exact (via erf)."""
    return 0.5 * (1.0 + jax.scipy.special.erf(x / math.sqrt(2.0)))


def discretized_gaussian_log_likelihood(
    x: Array, mean: Array, log_scale: Array, cdf: Callable[[Array], Array] = standard_normal_cdf
) -> Array:
    """log p(x) of 8-bit data in [−1, 1] under N(mean, e^{2·log_scale}), elementwise, in nats.

    Each of the 256 levels owns a bin of width 2/255; the end bins extend to ±∞ (Ho et al. 2020,
    eq. 13). `cdf=approx_standard_normal_cdf` reproduces the DDPM/ADM numbers.
    """
    centered = x - mean
    inv_std = jnp.exp(-log_scale)
    cdf_plus = cdf(inv_std * (centered + 1.0 / 255.0))
    cdf_minus = cdf(inv_std * (centered - 1.0 / 255.0))
    log_cdf_plus = jnp.log(jnp.maximum(cdf_plus, 1e-12))
    log_one_minus_cdf_minus = jnp.log(jnp.maximum(1.0 - cdf_minus, 1e-12))
    log_delta = jnp.log(jnp.maximum(cdf_plus - cdf_minus, 1e-12))
    return jnp.where(
        x < -0.999, log_cdf_plus, jnp.where(x > 0.999, log_one_minus_cdf_minus, log_delta)
    )


def vlb_terms(
    schedule: Schedule, step: gaussian.ReverseStep, x0: Array, x_t: Array, index: Array
) -> Array:
    """L_t in bits per dimension, [B]: KL to the true posterior, or −log p(x0|x1) at i = 0."""
    true_mean, true_log_variance = gaussian.q_posterior(schedule, x0, x_t, index)
    kl = mean_flat(normal_kl(true_mean, true_log_variance, step.mean, step.log_variance))
    nll = -mean_flat(
        discretized_gaussian_log_likelihood(
            x0, step.mean, 0.5 * step.log_variance, cdf=approx_standard_normal_cdf
        )
    )
    return jnp.where(index == 0, nll, kl) / math.log(2.0)


# What the mean channels are trained to match, given (schedule, x0, index, noise).
TARGETS: dict[str, Callable[[Schedule, Array, Array, Array], Array]] = {
    "eps": lambda schedule, x0, index, noise: noise,
    "x0": lambda schedule, x0, index, noise: x0,
    "v": gaussian.v_from_x0_eps,
}


def diffusion_loss(
    schedule: Schedule,
    model_output: Array,
    x0: Array,
    x_t: Array,
    index: Array,
    noise: Array,
    *,
    mean_type: str = "eps",
    var_type: str = "fixed_small",
    vlb_weight: float = 1e-3,
    num_train_steps: int | None = None,
    timestep_weight: Callable[[Array], Array] | None = None,
) -> dict[str, Array]:
    """Per-example losses, each [B]: `loss` (what to minimise), `mse`, and `vlb` when learned.

    model_output: [B, …, C] (or 2C with learned variance) evaluated at x_t = q_sample(x0, index,
    noise). With a learned variance the loss is hybrid: mse + λ·T·L_t, where the VLB gets the
    mean channels through a stop-gradient so that it trains the variance only.
    `timestep_weight(index) -> [B]` reweights the MSE per timestep.
    """
    gaussian.check_prediction(mean_type)
    gaussian.check_variance(var_type)
    mean_output, variance_output = gaussian.split_output(model_output, x_t, var_type)
    target = TARGETS[mean_type](schedule, x0, index, noise)
    mse = mean_flat(jnp.square(target - mean_output.astype(jnp.float32)))
    if timestep_weight is not None:
        mse = mse * timestep_weight(index)
    losses = {"mse": mse, "loss": mse}
    if variance_output is not None:
        frozen = jnp.concatenate([jax.lax.stop_gradient(mean_output), variance_output], axis=-1)
        options = gaussian.ReverseOptions(mean_type=mean_type, var_type=var_type)
        step = gaussian.p_mean_variance(schedule, frozen, x_t, index, options)
        steps = schedule.num_steps if num_train_steps is None else num_train_steps
        vlb = vlb_terms(schedule, step, x0, x_t, index)
        losses["vlb"] = vlb
        losses["loss"] = mse + vlb_weight * steps * vlb
    return losses
