"""Classifier-free guidance (Ho & Salimans 2021) as one batched model call per step.

ε̂ = ε_u + s·(ε_c − ε_u): s = 1 is the conditional model, s = 0 the unconditional one (seed 003
writes the same with w = s − 1). Only the mean channels are guided; learned-variance channels
pass through from the conditional half.
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from unclip_jax.diffusion.samplers import DenoiseFn

Array = jax.Array
# model_fn(x: [2B, …], t: [2B], conditioning pytree with leading axis 2B) -> output [2B, …, C']
ModelFn = Callable[[Array, Array, Any], Array]


def check_guidance_scale(scale: float) -> None:
    if not scale >= 0:
        raise ValueError(f"guidance_scale must be >= 0, got {scale}")


def guide(conditional: Array, unconditional: Array, scale: Array, mean_channels: int) -> Array:
    """Guided output from the two halves, float32; channels past `mean_channels` conditional."""
    conditional = conditional.astype(jnp.float32)
    unconditional = unconditional.astype(jnp.float32)
    mean = unconditional[..., :mean_channels] + scale * (
        conditional[..., :mean_channels] - unconditional[..., :mean_channels]
    )
    return jnp.concatenate([mean, conditional[..., mean_channels:]], axis=-1)


def classifier_free_guidance(
    model_fn: ModelFn,
    conditioning: Any,
    null_conditioning: Any,
    scale: float | Array,
    mean_channels: int | None = None,
) -> DenoiseFn:
    """A denoiser that runs the conditional and unconditional inputs as ONE batch of 2B.

    conditioning / null_conditioning: pytrees whose leaves have leading axis B.
    mean_channels: how many output channels to guide (default: all).
    """

    def denoise(x: Array, t: Array) -> Array:
        doubled = jax.tree.map(
            lambda c, u: jnp.concatenate([c, u], axis=0), conditioning, null_conditioning
        )
        output = model_fn(jnp.concatenate([x, x], axis=0), jnp.concatenate([t, t], axis=0), doubled)
        conditional, unconditional = jnp.split(output, 2, axis=0)
        channels = output.shape[-1] if mean_channels is None else mean_channels
        return guide(conditional, unconditional, scale, channels)

    return denoise
