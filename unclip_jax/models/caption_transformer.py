"""The GLIDE-style caption encoder trained with the decoder (Nichol et al. 2021, §2.2; unCLIP §2.1).

Token + position embeddings, a pre-LayerNorm transformer and a final LayerNorm. Its per-token
states extend the keys/values of every attention layer of the decoder; the state of the last
caption token is projected and added to the timestep embedding (by `DecoderConditioning`).
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from unclip_jax.models.clip import TowerConfig, tower_blocks
from unclip_jax.nn.embedding import position_embedding, token_embedding
from unclip_jax.nn.norm import layer_norm
from unclip_jax.nn.precision import PrecisionModule

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class CaptionTransformerConfig:
    """The caption encoder's sizes, by the names decoder configs and saved pipelines give them."""

    vocab_size: int = 50257
    max_length: int = 256
    width: int = 2048
    layers: int = 24
    heads: int = 32
    mlp_ratio: int = 4
    layer_norm_eps: float = 1e-5

    def __post_init__(self):
        self.tower()  # checks the width against the heads

    def tower(self) -> TowerConfig:
        """Its blocks: CLIP's text tower with exact GELU and a `mlp_ratio`-wide MLP."""
        mlp_dim = self.mlp_ratio * self.width
        return TowerConfig(
            self.width, self.layers, self.heads, mlp_dim, "gelu", self.layer_norm_eps
        )


class CaptionTransformer(PrecisionModule):
    """Caption token ids -> (per-token states [B, L, W], state of the last valid token [B, W])."""

    config: CaptionTransformerConfig

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
        embed = token_embedding(
            cfg.vocab_size, cfg.width, name="token_embedding", param_dtype=self.param_dtype
        )
        positions = position_embedding(self, cfg.max_length, cfg.width)
        x = embed(tokens) + positions[None, : tokens.shape[1]]
        x = x.astype(self.dtype)
        # A caption with no valid token (an empty or dropped one) attends to all positions, so
        # that no softmax row is empty.
        keys = mask | ~jnp.any(mask, axis=1, keepdims=True)
        x = tower_blocks(
            x,
            cfg.tower(),
            keys[:, None, None, :],
            attention_name="attention",
            fast_variance=True,
            **self.dtypes,
        )
        x = layer_norm(cfg.layer_norm_eps, name="final_ln", **self.dtypes)(x)
        last = jnp.maximum(jnp.sum(mask, axis=1) - 1, 0)
        return x, x[jnp.arange(x.shape[0]), last]
