"""The GLIDE-style caption encoder trained with the decoder (Nichol et al. 2021, §2.2; unCLIP §2.1).

Token + position embeddings, a pre-LayerNorm transformer and a final LayerNorm. Its per-token
states extend the keys/values of every attention layer of the decoder; the state of the last
caption token is projected and added to the timestep embedding (by `DecoderConditioning`).
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from unclip_jax.models.clip import ResidualBlock
from unclip_jax.nn.embedding import position_embedding, token_embedding
from unclip_jax.nn.norm import layer_norm

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
        embed = token_embedding(
            cfg.vocab_size, cfg.width, name="token_embedding", param_dtype=self.param_dtype
        )
        positions = position_embedding(self, cfg.max_length, cfg.width)
        x = embed(tokens) + positions[None, : tokens.shape[1]]
        x = x.astype(self.dtype)
        # A caption with no valid token (an empty or dropped one) attends to all positions, so
        # that no softmax row is empty.
        keys = mask | ~jnp.any(mask, axis=1, keepdims=True)
        for i in range(cfg.layers):
            x = ResidualBlock(
                cfg.heads,
                cfg.mlp_ratio * cfg.width,
                "gelu",
                cfg.layer_norm_eps,
                attention_name="attention",
                fast_variance=True,
                name=f"block_{i}",
                **common,
            )(x, keys[:, None, None, :])
        x = layer_norm(cfg.layer_norm_eps, name="final_ln", **common)(x)
        last = jnp.maximum(jnp.sum(mask, axis=1) - 1, 0)
        return x, x[jnp.arange(x.shape[0]), last]
