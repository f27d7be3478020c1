"""Classifier-free guidance (Ho & Salimans 2021) as one batched model call per step.

ε̂ = ε_u + s·(ε_c − ε_u): s = 1 is the conditional model, s = 0 the unconditional one (seed 003
writes the same with w = s − 1). Only the mean channels are guided; learned-variance channels
pass through from the conditional half.

The doubled batch holds each row's two halves side by side (`pair`: row 2i conditional, 2i + 1
unconditional), so that a batch split over devices keeps both halves of a row on its device (no
data moves between devices to guide), and one row's halves can still run on two devices.
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from unclip_jax.diffusion.samplers import DenoiseFn

Array = jax.Array
# model_fn(x: [2B, …], t: [2B], conditioning pytree with leading axis 2B) -> output [2B, …, C'],
# rows in `pair` order
ModelFn = Callable[[Array, Array, Any], Array]


def pair(conditional: Array, unconditional: Array) -> Array:
    """[B, …] and [B, …] → [2B, …]: row 2i the conditional row i, row 2i + 1 its unconditional."""
    stacked = jnp.stack([conditional, jnp.broadcast_to(unconditional, conditional.shape)], axis=1)
    return stacked.reshape(-1, *conditional.shape[1:])


def unpair(doubled: Array) -> tuple[Array, Array]:
    """[2B, …] in `pair` order → (conditional [B, …], unconditional [B, …])."""
    pairs = doubled.reshape(-1, 2, *doubled.shape[1:])
    return pairs[:, 0], pairs[:, 1]


def is_unconditional(rows: int) -> Array:
    """[2B] bool: the unconditional rows of a doubled batch of `rows` = 2B."""
    return jnp.arange(rows) % 2 == 1


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

    model_fn(x: [2B, …], t: [2B]) -> output [2B, …, C'], rows in `pair` order (the caller
    bakes both halves' conditioning into it, paired alike). mean_channels: how many output
    channels to guide (default: all).
    """

    def denoise(x: Array, t: Array) -> Array:
        output = model_fn(pair(x, x), pair(t, t))
        conditional, unconditional = unpair(output)
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
    doubled = jax.tree.map(pair, conditioning, null_conditioning)

    return guided_denoiser(lambda x, t: model_fn(x, t, doubled), scale, mean_channels)
