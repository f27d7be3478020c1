"""Embeddings shared by the models: sinusoidal timestep features, and token and learned position
tables whose parameters carry logical axis names."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from unclip_jax.sharding import EMBED, LENGTH, VOCAB

Array = jax.Array


def timestep_embedding(t: Array, dim: int, max_period: float = 10000.0) -> Array:
    """Sinusoidal features [cos | sin] of (fractional) timesteps, as ADM and diffusers'
    `flip_sin_to_cos`; t: [B] -> [B, dim] (zero-padded when dim is odd)."""
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    angles = jnp.asarray(t, jnp.float32)[:, None] * freqs[None]
    emb = jnp.concatenate([jnp.cos(angles), jnp.sin(angles)], axis=-1)
    return jnp.pad(emb, ((0, 0), (0, dim % 2)))


def token_embedding(vocab_size: int, width: int, *, name: str, **dtypes) -> nn.Embed:
    """Token table [V, D] (names VOCAB, EMBED), initialised N(0, 0.02²) as GPT-2 and CLIP;
    `dtypes`: dtype and/or param_dtype."""
    init = nn.with_logical_partitioning(nn.initializers.normal(0.02), (VOCAB, EMBED))
    return nn.Embed(vocab_size, width, embedding_init=init, name=name, **dtypes)


def position_embedding(
    module: nn.Module,
    length: int,
    width: int,
    stddev: float = 0.01,
    name: str = "position_embedding",
) -> Array:
    """A learned position table [length, width] (names LENGTH, EMBED) of `module`, made inside its
    compact `__call__` or `setup`."""
    init = nn.with_logical_partitioning(nn.initializers.normal(stddev), (LENGTH, EMBED))
    return module.param(name, init, (length, width), module.param_dtype)
