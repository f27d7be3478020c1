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


def guide(conditional: Array, unconditional: Array, scale: Array, mean_channels: int) -> Array:
    """Guided output from the two halves, float32; channels past `mean_channels` conditional."""
    conditional = conditional.astype(jnp.float32)
    unconditional = unconditional.astype(jnp.float32)
    mean = unconditional[..., :mean_channels] + scale * (
        conditional[..., :mean_channels] - unconditional[..., :mean_channels]
    )
    return jnp.concatenate([mean, conditional[..., mean_channels:]], axis=-1)


def guided_denoiser(
    model_fn: Callable[[Array, Array], Array],
    scale: float | Array,
    mean_channels: int | None = None,
) -> DenoiseFn:
    """A denoiser running the conditional and unconditional halves as ONE batch of 2B.

    model_fn(x: [2B, …], t: [2B]) -> output [2B, …, C']: its first B rows conditional, the last
    B unconditional (the caller bakes both halves' conditioning into it). mean_channels: how
    many output channels to guide (default: all).
    """

    def denoise(x: Array, t: Array) -> Array:
        output = model_fn(jnp.concatenate([x, x], axis=0), jnp.concatenate([t, t], axis=0))
        conditional, unconditional = jnp.split(output, 2, axis=0)
        channels = output.shape[-1] if mean_channels is None else mean_channels
        return guide(conditional, unconditional, scale, channels)

    return denoise


def classifier_free_guidance(
    model_fn: ModelFn,
    conditioning: Any,
    null_conditioning: Any,
    scale: float | Array,
    mean_channels: int | None = None,
) -> DenoiseFn:
    """`guided_denoiser` over conditioning pytrees whose leaves have leading axis B.

    mean_channels: how many output channels to guide (default: all).
    """
    doubled = jax.tree.map(
        lambda c, u: jnp.concatenate([c, u], axis=0), conditioning, null_conditioning
    )

    return guided_denoiser(lambda x, t: model_fn(x, t, doubled), scale, mean_channels)
