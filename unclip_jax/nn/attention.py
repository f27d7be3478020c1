"""Multi-head attention with optional extra key/value tokens (`softmax_attention`).

The extra tokens are how conditioning enters attention in GLIDE/unCLIP (caption and image-embedding
tokens prepended to the keys and values) and in diffusers' `AttnAddedKVProcessor`.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from unclip_jax.nn.linear import dense
from unclip_jax.nn.precision import PrecisionModule
from unclip_jax.nn.softmax_attention import dot_product_attention
from unclip_jax.sharding import EMBED, HEAD_DIM, HEADS, PER_HEAD, TOKENS, constrain

Array = jax.Array

IN_NAMES = (EMBED, HEADS, HEAD_DIM)  # kernel [D, H, Dh] of the query/key/value projections
OUT_NAMES = (HEADS, HEAD_DIM, EMBED)  # kernel [H, Dh, D_out] of the output projection


class MultiHeadAttention(PrecisionModule):
    """Softmax attention; `context` defaults to `x` (self-attention).

    Projections are named `query`, `key`, `value`, `out` and, for the extra tokens,
    `extra_key`, `extra_value`; kernels are [D, H, Dh] (inputs) and [H, Dh, D_out] (output).
    Queries, keys and values are constrained to `PER_HEAD` (heads over the tensor axis).
    """

    num_heads: int
    head_dim: int | None = None  # default: width // num_heads
    out_features: int | None = None  # default: width of x
    use_bias: bool = True

    @nn.compact
    def __call__(
        self,
        x: Array,  # [B, Lq, D]
        context: Array | None = None,  # [B, Lk, Dc]
        extra_tokens: Array | None = None,  # [B, Le, De], prepended to the keys and values
        mask: Array | None = None,  # bool, broadcastable to [B, H, Lq, Le + Lk]
        is_causal: bool = False,
    ) -> Array:  # [B, Lq, out_features]
        width = x.shape[-1]
        head_dim = self.head_dim or width // self.num_heads
        if head_dim * self.num_heads != width and self.head_dim is None:
            raise ValueError(f"width {width} is not divisible by num_heads {self.num_heads}")
        heads = (self.num_heads, head_dim)
        context = x if context is None else context
        common = dict(use_bias=self.use_bias, **self.dtypes)

        def project(name: str, inputs: Array) -> Array:  # [B, L, D] -> [B, L, H, Dh]
            return constrain(dense(heads, IN_NAMES, name=name, **common)(inputs), PER_HEAD)

        query, key, value = project("query", x), project("key", context), project("value", context)
        if extra_tokens is not None:
            key = jnp.concatenate([project("extra_key", extra_tokens), key], axis=1)
            value = jnp.concatenate([project("extra_value", extra_tokens), value], axis=1)
        attended = dot_product_attention(
            query, key, value, mask=mask, is_causal=is_causal
        )  # [B, Lq, H, Dh]
        attended = constrain(attended, PER_HEAD)
        out = dense(self.out_features or width, OUT_NAMES, name="out", **common)(attended)
        return constrain(out, TOKENS)
