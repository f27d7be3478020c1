"""The autoregressive prior of unCLIP (Ramesh et al. 2022, §2.1).

The image embedding is reduced by PCA and quantised (`pca_quantizer.PCAQuantizer`) into K codes;
a causal transformer over

    [caption token encodings (L), text embedding z_t, quantised z_i·z_t, code_0 … code_{K−2}]

predicts code_k at the position before it. The z_i·z_t token lets sampling ask for embeddings that
match the caption closely (the paper conditions on a high dot product). Sampling decodes the whole
sequence in one `lax.scan` with a key/value cache, guiding the logits of the captioned half by the
null-caption half of the same batch (`sampling.ar_prior`).
"""

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

from unclip_jax.models.prior import caption_conditioner, prior_blocks, sequence_mask
from unclip_jax.nn.embedding import position_embedding, token_embedding
from unclip_jax.nn.linear import dense
from unclip_jax.nn.norm import layer_norm
from unclip_jax.nn.precision import PrecisionModule, parse_dtypes
from unclip_jax.sharding import EMBED, JOINT_EMBED, VOCAB

Array = jax.Array
NUM_PREFIX_EXTRA = 2  # the text embedding and the dot-product token after the caption tokens


class DecodeCache(struct.PyTreeNode):
    """Keys and values of every position decoded so far, in a buffer of the full length."""

    keys: Array  # [layers, B, S, H, Dh], S = L + 2 + K − 1
    values: Array  # [layers, B, S, H, Dh]
    valid: Array  # [B, S] bool: filled and not caption padding


class ARPrior(PrecisionModule):
    """Logits over the `num_buckets` codes of each of the `num_codes` PCA components."""

    num_codes: int  # K, PCA components
    num_buckets: int = 1024  # V, buckets per component
    num_dot_buckets: int = 64  # buckets of the z_i·z_t token
    text_embed_dim: int = 1024
    token_dim: int = 1024
    num_tokens: int = 77  # caption length L
    width: int = 2048
    depth: int = 20
    num_heads: int = 32
    head_dim: int | None = None
    mlp_ratio: int = 4
    null_conditioning: str = "learned"  # or "empty_caption" (the caller substitutes it)

    def setup(self):
        width = self.width
        self.tokens_proj = dense(width, (JOINT_EMBED, EMBED), name="tokens_proj", **self.dtypes)
        self.text_proj = dense(width, (JOINT_EMBED, EMBED), name="text_proj", **self.dtypes)
        self.dot_embed = token_embedding(
            self.num_dot_buckets, width, name="dot_embed", **self.dtypes
        )
        self.code_embed = token_embedding(self.num_buckets, width, name="code_embed", **self.dtypes)
        self.positions = position_embedding(self, self.cache_length, width, 0.02, name="positions")
        self.blocks = prior_blocks(
            width, self.num_heads, self.head_dim, self.mlp_ratio, self.depth, **self.dtypes
        )
        self.norm_out = layer_norm(name="norm_out", **self.dtypes)
        self.logits = dense(self.num_buckets, (EMBED, VOCAB), name="logits", **self.dtypes)
        self._condition = caption_conditioner(self, self.text_embed_dim, self.token_dim)

    @property
    def prefix_length(self) -> int:  # P = L + 2
        return self.num_tokens + NUM_PREFIX_EXTRA

    @property
    def cache_length(self) -> int:  # positions fed to the model: P + K − 1
        return self.prefix_length + self.num_codes - 1

    def _prefix(self, dot_bucket, text_embed, text_tokens) -> Array:  # [B, P, W]
        tokens = jnp.concatenate(
            [
                self.tokens_proj(text_tokens),
                self.text_proj(text_embed)[:, None],
                self.dot_embed(jnp.asarray(dot_bucket, jnp.int32))[:, None],
            ],
            axis=1,
        )
        return tokens + jnp.asarray(self.positions[: self.prefix_length], self.dtype)

    def _head(self, h: Array) -> Array:  # [..., W] -> [..., V] float32
        return self.logits(self.norm_out(h)).astype(jnp.float32)

    def __call__(
        self,
        codes: Array,  # [B, K] int, teacher forcing
        dot_bucket: Array,  # [B] int, quantised z_i·z_t
        text_embed: Array,  # [B, Dz]
        text_tokens: Array,  # [B, L, Dt]
        text_mask: Array | None = None,  # [B, L] bool, False at padding
        drop: Array | None = None,  # [B] bool, null caption (classifier-free guidance)
    ) -> Array:  # [B, K, V] logits of code_k given everything before it
        if codes.shape[1:] != (self.num_codes,):
            raise ValueError(f"codes must have shape [B, {self.num_codes}], got {codes.shape}")
        text_embed, text_tokens, text_mask = self._condition(
            text_embed, text_tokens, text_mask, drop
        )
        inputs = self.code_embed(jnp.asarray(codes[:, :-1], jnp.int32))
        inputs = inputs + jnp.asarray(self.positions[self.prefix_length :], self.dtype)
        h = jnp.concatenate([self._prefix(dot_bucket, text_embed, text_tokens), inputs], axis=1)
        mask = sequence_mask(text_mask, NUM_PREFIX_EXTRA + self.num_codes - 1)
        for block in self.blocks:
            h = block(h, mask)
        return self._head(h[:, self.prefix_length - 1 :])

    def encode_prefix(
        self,
        dot_bucket: Array,  # [B]
        text_embed: Array,  # [B, Dz]
        text_tokens: Array,  # [B, L, Dt]
        text_mask: Array | None = None,  # [B, L] bool
        drop: Array | None = None,  # [B] bool
    ) -> tuple[Array, DecodeCache]:
        """The logits of code_0 [B, V] and a cache holding the prefix's keys and values."""
        text_embed, text_tokens, text_mask = self._condition(
            text_embed, text_tokens, text_mask, drop
        )
        h = self._prefix(dot_bucket, text_embed, text_tokens)
        mask = sequence_mask(text_mask, NUM_PREFIX_EXTRA)
        free = self.cache_length - self.prefix_length
        keys, values = [], []
        for block in self.blocks:
            h, k, v = block.prefix(h, mask)
            keys.append(jnp.pad(k, ((0, 0), (0, free), (0, 0), (0, 0))))
            values.append(jnp.pad(v, ((0, 0), (0, free), (0, 0), (0, 0))))
        batch = text_mask.shape[0]
        valid = jnp.concatenate(
            [text_mask, jnp.ones((batch, NUM_PREFIX_EXTRA), bool), jnp.zeros((batch, free), bool)],
            axis=1,
        )
        cache = DecodeCache(keys=jnp.stack(keys), values=jnp.stack(values), valid=valid)
        return self._head(h[:, -1]), cache

    def decode_step(
        self, cache: DecodeCache, code: Array, index: Array
    ) -> tuple[Array, DecodeCache]:
        """Feed code_index [B]; return the logits of code_{index+1} [B, V] and the new cache."""
        position = self.prefix_length + index
        position_embed = jax.lax.dynamic_index_in_dim(self.positions, position, keepdims=False)
        h = self.code_embed(jnp.asarray(code, jnp.int32))[:, None]
        h = h + jnp.asarray(position_embed, self.dtype)
        batch = code.shape[0]
        mask = jnp.concatenate([cache.valid, jnp.ones((batch, 1), bool)], axis=1)[:, None, None]
        keys, values = cache.keys, cache.values
        for i, block in enumerate(self.blocks):
            h, k, v = block.step(h, cache.keys[i], cache.values[i], mask)
            keys = keys.at[i, :, position].set(k[:, 0].astype(keys.dtype))
            values = values.at[i, :, position].set(v[:, 0].astype(values.dtype))
        valid = cache.valid.at[:, position].set(True)
        return self._head(h[:, 0]), DecodeCache(keys=keys, values=values, valid=valid)


def ar_prior_from_config(fields: Mapping[str, Any], **more: Any) -> ARPrior:
    """`ARPrior` from plain fields (a training config's `model` section and the quantizer's
    counts, or a pipeline's stage.json), dtypes by name; a field it lacks is named."""
    fields = parse_dtypes({**dict(fields), **more})
    known = {f.name for f in dataclasses.fields(ARPrior)} - {"parent", "name"}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(f"ARPrior has no fields {unknown}")
    return ARPrior(**fields)


def ar_prior_loss(logits: Array, codes: Array) -> tuple[Array, dict[str, Array]]:
    """Mean cross-entropy of the codes. logits: [B, K, V], codes: [B, K] -> (loss, aux)."""
    logits = logits.astype(jnp.float32)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, codes).mean()
    accuracy = (jnp.argmax(logits, axis=-1) == codes).mean()
    return loss, {"loss": loss, "accuracy": accuracy}
