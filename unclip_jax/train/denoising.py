"""The denoising objective the diffusion stages (prior, decoder, upsamplers) share: a batch noised
at random timesteps, and the per-example loss terms reduced to a loss and its metrics."""

from collections.abc import Callable

import jax
import jax.numpy as jnp

from unclip_jax.diffusion import gaussian, losses
from unclip_jax.diffusion.schedules import Schedule
from unclip_jax.train.task import Metrics

Array = jax.Array


def noised_batch(schedule: Schedule, key: Array, x0: Array) -> tuple[Array, Array, Array]:
    """(index [B], noise like x0, x_t like x0): x0 [B, ...] diffused to a uniformly drawn step."""
    index_key, noise_key = jax.random.split(key)
    index = jax.random.randint(index_key, (x0.shape[0],), 0, schedule.num_steps)
    noise = jax.random.normal(noise_key, x0.shape, jnp.float32)
    return index, noise, gaussian.q_sample(schedule, x0, index, noise)


def image_loss(
    schedule: Schedule,
    key: Array,
    x0: Array,  # [B, H, W, 3]
    denoise: Callable[[Array, Array], Array],
    mean_type: str,
    var_type: str,
) -> tuple[Array, Metrics]:
    """(mean loss, {"mse", and "vlb" with a learned variance}) of an image denoiser
    `denoise(x_t, timesteps [B]) -> [B, H, W, 3 or 6]` on x0 noised at random steps."""
    index, noise, x_t = noised_batch(schedule, key, x0)
    output = denoise(x_t, schedule.timesteps[index]).astype(jnp.float32)
    terms = losses.diffusion_loss(
        schedule, output, x0, x_t, index, noise, mean_type=mean_type, var_type=var_type
    )
    metrics = {name: jnp.mean(terms[name]) for name in ("mse", "vlb") if name in terms}
    return jnp.mean(terms["loss"]), metrics


def dropout(train: bool, key: Array) -> dict:
    """A module's `apply` keywords: dropout from `key` when training, none at evaluation."""
    return {"deterministic": not train, "rngs": {"dropout": key} if train else None}
