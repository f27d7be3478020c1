"""The GLIDE-style caption encoder trained with the decoder (Nichol et al. 2021, §2.2; unCLIP §2.1).

Token + position embeddings, a pre-LayerNorm transformer and a final LayerNorm. Its per-token
states extend the keys/values of every attention layer of the decoder; the state of the last
caption token is projected and added to the timestep embedding (by `DecoderConditioning`).
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from unclip_jax.nn.attention import MultiHeadAttention
from unclip_jax.nn.linear import dense
from unclip_jax.nn.norm import layer_norm
from unclip_jax.sharding import EMBED, HIDDEN, LENGTH, MLP, TOKENS, VOCAB, constrain

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class CaptionTransformerConfig:
    vocab_size: int = 50257
    max_length: int = 256
    width: int = 2048
    layers: int = 24
    heads: int = 32
    mlp_ratio: int = 4
    layer_norm_eps: float = 1e-5

    def __post_init__(self):
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not divisible by heads {self.heads}")


class CaptionBlock(nn.Module):
    """x + attn(LN(x)); x + MLP(LN(x)), bidirectional attention over the valid tokens; states
    constrained to `TOKENS`, the MLP's hidden layer to `HIDDEN`."""

    heads: int
    mlp_ratio: int = 4
    eps: float = 1e-5
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, mask: Array) -> Array:  # x: [B, L, W], mask: [B, 1, 1, L]
        common = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        width = x.shape[-1]
        h = layer_norm(self.eps, name="ln_1", **common)(x)
        x = x + MultiHeadAttention(self.heads, name="attention", **common)(h, mask=mask)
        h = layer_norm(self.eps, name="ln_2", **common)(constrain(x, TOKENS))
        h = constrain(dense(width * self.mlp_ratio, (EMBED, MLP), name="fc1", **common)(h), HIDDEN)
        h = dense(width, (MLP, EMBED), name="fc2", **common)(jax.nn.gelu(h, approximate=False))
        return constrain(x + h, TOKENS)


class CaptionTransformer(nn.Module):
    """Caption token ids -> (per-token states [B, L, W], state of the last valid token [B, W])."""

    config: CaptionTransformerConfig
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(
        self,
        tokens: Array,  # [B, L] int
        mask: Array,  # [B, L] bool, False at padding
    ) -> tuple[Array, Array]:
        cfg = self.config
        if tokens.shape[1] > cfg.max_length:
            raise ValueError(
                f"caption length {tokens.shape[1]} exceeds max_length {cfg.max_length}"
            )
        common = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        embed = nn.Embed(
            cfg.vocab_size,
            cfg.width,
            embedding_init=nn.with_logical_partitioning(
                nn.initializers.normal(0.02), (VOCAB, EMBED)
            ),
            param_dtype=self.param_dtype,
            name="token_embedding",
        )
        positions = self.param(
            "position_embedding",
            nn.with_logical_partitioning(nn.initializers.normal(0.01), (LENGTH, EMBED)),
            (cfg.max_length, cfg.width),
            self.param_dtype,
        )
        x = embed(tokens) + positions[None, : tokens.shape[1]]
        x = x.astype(self.dtype)
        # A caption with no valid token (an empty or dropped one) attends to all positions, so
        # that no softmax row is empty.
        keys = mask | ~jnp.any(mask, axis=1, keepdims=True)
        for i in range(cfg.layers):
            x = CaptionBlock(
                cfg.heads, cfg.mlp_ratio, cfg.layer_norm_eps, name=f"block_{i}", **common
            )(x, keys[:, None, None, :])
        x = layer_norm(cfg.layer_norm_eps, name="final_ln", **common)(x)
        last = jnp.maximum(jnp.sum(mask, axis=1) - 1, 0)
        return x, x[jnp.arange(x.shape[0]), last]
