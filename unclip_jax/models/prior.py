"""The diffusion prior of unCLIP (Ramesh et al. 2022, §2.1 and Appendix C).

A decoder-only transformer with a causal mask over the sequence

    [caption token encodings (L), text embedding z_t, timestep, noised image embedding, query]

whose output at the final learned query predicts the clean image embedding z_i (not the noise).
Its layout can express diffusers' `PriorTransformer` (Karlo) exactly: token order, learned
positions, the caption padding mask, `norm_out` and the output projection.

The caption prefix (tokens and z_t) only attends to itself, so its keys and values are the same
at every sampling step: `encode_prefix` computes them once and `step` runs the three per-step
tokens against them.
"""

import functools
import math
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import struct

from unclip_jax.nn.attention import MultiHeadAttention
from unclip_jax.nn.embedding import position_embedding, timestep_embedding
from unclip_jax.nn.linear import dense
from unclip_jax.nn.norm import layer_norm
from unclip_jax.nn.precision import PrecisionModule
from unclip_jax.nn.softmax_attention import dot_product_attention
from unclip_jax.sharding import EMBED, HIDDEN, JOINT_EMBED, LENGTH, MLP, TOKENS, constrain

Array = jax.Array

NUM_STEP_TOKENS = 3  # timestep, noised embedding, query
NULL_CONDITIONINGS = ("learned", "empty_caption")


class PrefixCache(struct.PyTreeNode):
    """Keys and values of the caption prefix in every layer, fixed across sampling steps."""

    keys: Array  # [layers, B, P, H, Dh], P = L + 1 (caption tokens, text embedding)
    values: Array  # [layers, B, P, H, Dh]
    mask: Array  # [B, P] bool, False at padded caption tokens


def substitute_null(
    drop: Array,  # [B] bool, True where the caption is replaced by the null conditioning
    text_embed: Array,  # [B, Dz]
    text_tokens: Array,  # [B, L, Dt]
    text_mask: Array,  # [B, L] bool
    null_embed: Array,  # [Dz] or [B, Dz]
    null_tokens: Array,  # [L, Dt] or [B, L, Dt]
    null_mask: Array,  # [L] or [B, L] bool
) -> tuple[Array, Array, Array]:
    """Classifier-free guidance conditioning: the null caption where `drop` is set."""
    drop = jnp.asarray(drop, bool)
    text_embed = jnp.where(drop[:, None], null_embed, text_embed)
    text_tokens = jnp.where(drop[:, None, None], null_tokens, text_tokens)
    text_mask = jnp.where(drop[:, None], null_mask, text_mask)
    return text_embed, text_tokens, text_mask


def caption_conditioning(
    text_embed: Array,  # [B, Dz]
    text_tokens: Array,  # [B, L, Dt]
    text_mask: Array | None,  # [B, L] bool, None: no padding
    drop: Array | None,  # [B] bool, True where the caption is replaced by the null caption
    *,
    text_dim: int,
    token_dim: int,
    num_tokens: int,
    null: tuple[Array, Array] | None,  # the learned null (text embedding [Dz], tokens [L, Dt])
) -> tuple[Array, Array, Array]:
    """A prior's caption conditioning, shapes checked, the mask filled in and, where `drop` is
    given, the learned null caption substituted (classifier-free guidance training)."""
    batch = text_embed.shape[0]
    want = {
        "text_embed": ((batch, text_dim), text_embed.shape),
        "text_tokens": ((batch, num_tokens, token_dim), text_tokens.shape),
    }
    if text_mask is not None:
        want["text_mask"] = ((batch, num_tokens), text_mask.shape)
    for name, (expected, got) in want.items():
        if tuple(got) != expected:
            raise ValueError(f"{name} must have shape {expected}, got {tuple(got)}")
    if text_mask is None:
        text_mask = jnp.ones((batch, num_tokens), bool)
    text_mask = jnp.asarray(text_mask, bool)
    if drop is None:
        return text_embed, text_tokens, text_mask
    if null is None:
        raise ValueError(
            "drop needs null_conditioning='learned'; with 'empty_caption' pass the empty "
            "caption's encoding in place of dropped captions (see substitute_null)"
        )
    null_embed, null_tokens = null
    null_mask = jnp.ones((num_tokens,), bool)
    return substitute_null(
        drop, text_embed, text_tokens, text_mask, null_embed, null_tokens, null_mask
    )


def check_null_given(null, null_conditioning: str) -> None:
    """A sampler's `null` (the empty caption's encoding) is given exactly when the prior guides
    with the empty caption rather than learned null tokens."""
    if (null is None) != (null_conditioning == "learned"):
        raise ValueError(
            "null (the empty caption's encoding) must be given exactly when "
            f"null_conditioning is 'empty_caption'; the model has {null_conditioning!r} "
            f"and null is {'set' if null is not None else None}"
        )


class EmbeddingNormalizer(struct.PyTreeNode):
    """Maps CLIP image embeddings to the space the prior diffuses in, and back.

    kind "unit_norm": z / |z| * sqrt(D) (the paper); "mean_std": (z - mean) / std per dimension
    (Karlo's `clip_mean` / `clip_std`).
    """

    mean: Array  # [D]
    std: Array  # [D]
    kind: str = struct.field(pytree_node=False, default="unit_norm")  # or "mean_std"

    @classmethod
    def create(cls, kind: str, dim: int, mean: Array | None = None, std: Array | None = None):
        if kind not in _NORMALIZERS:
            raise ValueError(
                f"embedding normalisation must be one of {sorted(_NORMALIZERS)}, got {kind!r}"
            )
        if kind == "mean_std" and (mean is None or std is None):
            raise ValueError("embedding normalisation 'mean_std' needs both mean and std")
        mean = jnp.zeros((dim,), jnp.float32) if mean is None else jnp.asarray(mean, jnp.float32)
        std = jnp.ones((dim,), jnp.float32) if std is None else jnp.asarray(std, jnp.float32)
        if mean.shape != (dim,) or std.shape != (dim,):
            raise ValueError(
                f"mean and std must have shape ({dim},), got {mean.shape} and {std.shape}"
            )
        return cls(mean=mean, std=std, kind=kind)

    def normalize(self, z: Array) -> Array:  # [..., D] -> [..., D]
        return _NORMALIZERS[self.kind][0](self, z)

    def denormalize(self, x: Array) -> Array:  # [..., D] -> [..., D]
        return _NORMALIZERS[self.kind][1](self, x)


def _unit_norm(norm: EmbeddingNormalizer, z: Array) -> Array:
    z = jnp.asarray(z, jnp.float32)
    return (
        z * jax.lax.rsqrt(jnp.sum(z * z, axis=-1, keepdims=True) + 1e-12) * math.sqrt(z.shape[-1])
    )


def _unit_denorm(norm: EmbeddingNormalizer, x: Array) -> Array:
    return jnp.asarray(x, jnp.float32) / math.sqrt(x.shape[-1])


_NORMALIZERS = {
    "unit_norm": (_unit_norm, _unit_denorm),
    "mean_std": (lambda n, z: (z - n.mean) / n.std, lambda n, x: x * n.std + n.mean),
}


def _project(params: dict, x: Array, dtype) -> Array:
    """A `MultiHeadAttention` input projection: [B, S, D] x kernel [D, H, Dh] -> [B, S, H, Dh]."""
    kernel = jnp.asarray(params["kernel"], dtype)
    return jnp.einsum("bsd,dhk->bshk", x.astype(dtype), kernel) + jnp.asarray(params["bias"], dtype)


class PriorBlock(PrecisionModule):
    """Pre-LayerNorm transformer block: x + attn(LN(x)), then x + MLP(LN(x)) with exact GELU;
    states constrained to `TOKENS`, the MLP's hidden layer to `HIDDEN`."""

    width: int
    num_heads: int
    head_dim: int | None = None
    mlp_dim: int = 8192

    def setup(self):
        self.norm_attn = layer_norm(name="norm_attn", **self.dtypes)
        self.attn = MultiHeadAttention(self.num_heads, self.head_dim, name="attn", **self.dtypes)
        self.norm_mlp = layer_norm(name="norm_mlp", **self.dtypes)
        self.mlp_in = dense(self.mlp_dim, (EMBED, MLP), name="mlp_in", **self.dtypes)
        self.mlp_out = dense(self.width, (MLP, EMBED), name="mlp_out", **self.dtypes)

    def _mlp(self, h: Array) -> Array:  # [B, S, W] -> [B, S, W]
        h = constrain(h, TOKENS)
        hidden = constrain(self.mlp_in(self.norm_mlp(h)), HIDDEN)
        return constrain(h + self.mlp_out(nn.gelu(hidden, approximate=False)), TOKENS)

    def __call__(self, h: Array, mask: Array) -> Array:
        """h: [B, S, W]; mask: [B, 1, S, S] bool (True = may attend)."""
        h = h + self.attn(self.norm_attn(h), mask=mask)
        return self._mlp(h)

    def prefix(self, h: Array, mask: Array) -> tuple[Array, Array, Array]:
        """Like `__call__`, also returning this layer's keys and values [B, S, H, Dh]."""
        normed = self.norm_attn(h)
        params = nn.meta.unbox(self.attn.variables["params"])
        keys = _project(params["key"], normed, self.dtype)
        values = _project(params["value"], normed, self.dtype)
        h = h + self.attn(normed, mask=mask)
        return self._mlp(h), keys, values

    def step(self, h: Array, keys: Array, values: Array, mask: Array) -> tuple[Array, Array, Array]:
        """New tokens h: [B, S, W] against cached keys/values [B, P, H, Dh]; mask [B, 1, S, P+S].

        Returns the new tokens' outputs [B, S, W] and their own keys and values [B, S, H, Dh].
        """
        normed = self.norm_attn(h)
        params = nn.meta.unbox(self.attn.variables["params"])
        query = _project(params["query"], normed, self.dtype)
        new_keys = _project(params["key"], normed, self.dtype)
        new_values = _project(params["value"], normed, self.dtype)
        attended = dot_product_attention(
            query,
            jnp.concatenate([keys, new_keys], axis=1),
            jnp.concatenate([values, new_values], axis=1),
            mask=mask,
        )
        out = params["out"]
        attended = jnp.einsum("bshk,hkd->bsd", attended, jnp.asarray(out["kernel"], self.dtype))
        h = h + attended + jnp.asarray(out["bias"], self.dtype)
        return self._mlp(h), new_keys, new_values


def check_null_conditioning(null_conditioning: str) -> None:
    if null_conditioning not in NULL_CONDITIONINGS:
        raise ValueError(
            f"null_conditioning must be one of {NULL_CONDITIONINGS}, got {null_conditioning!r}"
        )


def prior_blocks(
    width: int, num_heads: int, head_dim: int | None, mlp_ratio: int, depth: int, **dtypes
) -> list[PriorBlock]:
    """The transformer trunk of either prior: `depth` blocks named block_0 … block_{depth−1};
    `dtypes`: dtype and/or param_dtype."""
    return [
        PriorBlock(width, num_heads, head_dim, mlp_ratio * width, name=f"block_{i}", **dtypes)
        for i in range(depth)
    ]


def caption_conditioner(
    prior: nn.Module, text_dim: int, token_dim: int
) -> Callable[..., tuple[Array, Array, Array]]:
    """A prior's `_condition(text_embed, text_tokens, text_mask, drop)` (`caption_conditioning`
    at its sizes), made in its `setup`; with null_conditioning "learned" it creates the learned
    null caption: `null_text_embed` [Dz] and `null_tokens` [L, Dt]."""
    check_null_conditioning(prior.null_conditioning)
    null = None
    if prior.null_conditioning == "learned":
        init = nn.initializers.normal(0.02)
        null = (
            prior.param(
                "null_text_embed",
                nn.with_logical_partitioning(init, (JOINT_EMBED,)),
                (text_dim,),
                prior.param_dtype,
            ),
            prior.param(
                "null_tokens",
                nn.with_logical_partitioning(init, (LENGTH, JOINT_EMBED)),
                (prior.num_tokens, token_dim),
                prior.param_dtype,
            ),
        )
    return functools.partial(
        caption_conditioning,
        text_dim=text_dim,
        token_dim=token_dim,
        num_tokens=prior.num_tokens,
        null=null,
    )


class DiffusionPrior(PrecisionModule):
    """Predicts the clean image embedding from the caption and a noised image embedding.

    Inputs live in the normalised space of `EmbeddingNormalizer`; the output is the x0 prediction
    in that space (paper §2.1: "we find it better to predict the unnoised z_i directly").
    """

    embed_dim: int  # D: width of the (noised and predicted) image embedding
    text_embed_dim: int | None = None  # width of z_t; default D
    token_dim: int | None = None  # width of the caption token encodings; default D
    num_tokens: int = 77  # caption length L
    width: int = 2048
    depth: int = 20
    num_heads: int = 32
    head_dim: int | None = None  # default width // num_heads
    mlp_ratio: int = 4
    time_embed_dim: int | None = None  # hidden width of the timestep MLP; default width
    norm_in: bool = False  # LayerNorm over the whole sequence before the blocks
    text_embed_norm: bool = False  # LayerNorm on z_t before its projection
    null_conditioning: str = "learned"  # or "empty_caption" (the caller substitutes it)
    # False: every token sees every other, as diffusers' PriorTransformer does when called
    # without an attention mask; the prefix cache needs the causal mask.
    causal: bool = True

    def setup(self):
        width, text_dim, token_dim = self.width, self._text_dim, self._token_dim
        self.tokens_proj = dense(width, (JOINT_EMBED, EMBED), name="tokens_proj", **self.dtypes)
        self.text_norm = (
            layer_norm(name="text_norm", **self.dtypes) if self.text_embed_norm else None
        )
        self.text_proj = dense(width, (JOINT_EMBED, EMBED), name="text_proj", **self.dtypes)
        time_dim = self.time_embed_dim or width
        self.time_in = dense(time_dim, (EMBED, MLP), name="time_in", **self.dtypes)
        self.time_out = dense(width, (MLP, EMBED), name="time_out", **self.dtypes)
        self.x_proj = dense(width, (JOINT_EMBED, EMBED), name="x_proj", **self.dtypes)
        init = nn.initializers.normal(0.02)
        self.positions = position_embedding(
            self, self.num_tokens + 1 + NUM_STEP_TOKENS, width, 0.02, name="positions"
        )
        self.query = self.param(
            "query", nn.with_logical_partitioning(init, (EMBED,)), (width,), self.param_dtype
        )
        self.input_norm = layer_norm(name="norm_in", **self.dtypes) if self.norm_in else None
        self.blocks = prior_blocks(
            width, self.num_heads, self.head_dim, self.mlp_ratio, self.depth, **self.dtypes
        )
        self.norm_out = layer_norm(name="norm_out", **self.dtypes)
        self.out_proj = dense(self.embed_dim, (EMBED, JOINT_EMBED), name="out_proj", **self.dtypes)
        self._condition = caption_conditioner(self, text_dim, token_dim)

    @property
    def _text_dim(self) -> int:
        return self.text_embed_dim or self.embed_dim

    @property
    def _token_dim(self) -> int:
        return self.token_dim or self.embed_dim

    def _check_causal(self) -> None:
        if not self.causal:
            raise ValueError(
                "the prefix cache needs causal=True: without the causal mask the "
                "caption tokens attend to the per-step tokens"
            )

    def _prefix_tokens(self, text_embed: Array, text_tokens: Array) -> Array:
        """[B, L+1, W]: projected caption tokens and text embedding, with their positions."""
        if self.text_norm is not None:
            text_embed = self.text_norm(text_embed)
        tokens = jnp.concatenate(
            [self.tokens_proj(text_tokens), self.text_proj(text_embed)[:, None]], axis=1
        )
        return tokens + jnp.asarray(self.positions[: self.num_tokens + 1], self.dtype)

    def _step_tokens(self, x_t: Array, t: Array) -> Array:
        """[B, 3, W]: timestep, noised embedding and query tokens, with their positions."""
        batch = x_t.shape[0]
        t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), (batch,))
        time = self.time_out(nn.silu(self.time_in(timestep_embedding(t, self.width))))
        query = jnp.broadcast_to(jnp.asarray(self.query, self.dtype), (batch, self.width))
        tokens = jnp.stack([time, self.x_proj(x_t), query], axis=1)
        return tokens + jnp.asarray(self.positions[self.num_tokens + 1 :], self.dtype)

    def _readout(self, h: Array) -> Array:  # [B, W] -> [B, D] float32
        return self.out_proj(self.norm_out(h)).astype(jnp.float32)

    def __call__(
        self,
        x_t: Array,  # [B, D] noised image embedding
        t: Array,  # [B] or scalar, timestep
        text_embed: Array,  # [B, Dz]
        text_tokens: Array,  # [B, L, Dt] caption token encodings
        text_mask: Array | None = None,  # [B, L] bool, False at padding
        drop: Array | None = None,  # [B] bool, use the null caption (classifier-free guidance)
    ) -> Array:  # [B, D] predicted clean embedding
        text_embed, text_tokens, text_mask = self._condition(
            text_embed, text_tokens, text_mask, drop
        )
        h = jnp.concatenate(
            [self._prefix_tokens(text_embed, text_tokens), self._step_tokens(x_t, t)], 1
        )
        if self.input_norm is not None:
            h = self.input_norm(h)
        mask = sequence_mask(text_mask, NUM_STEP_TOKENS + 1, causal=self.causal)
        for block in self.blocks:
            h = block(h, mask)
        return self._readout(h[:, -1])

    def encode_prefix(
        self,
        text_embed: Array,  # [B, Dz]
        text_tokens: Array,  # [B, L, Dt]
        text_mask: Array | None = None,  # [B, L] bool
        drop: Array | None = None,  # [B] bool
    ) -> PrefixCache:
        """Keys and values of the caption prefix in every layer (once per sample)."""
        self._check_causal()
        text_embed, text_tokens, text_mask = self._condition(
            text_embed, text_tokens, text_mask, drop
        )
        h = self._prefix_tokens(text_embed, text_tokens)
        if self.input_norm is not None:
            h = self.input_norm(h)
        mask = sequence_mask(text_mask, 1)
        key_mask = mask[:, 0, -1]  # [B, P]: which prefix tokens may be attended to
        keys, values = [], []
        for block in self.blocks:
            h, k, v = block.prefix(h, mask)
            keys.append(k)
            values.append(v)
        return PrefixCache(keys=jnp.stack(keys), values=jnp.stack(values), mask=key_mask)

    def step(self, cache: PrefixCache, x_t: Array, t: Array) -> Array:
        """The prediction of `__call__` from a cached prefix: x_t [B, D], t [B] -> [B, D]."""
        self._check_causal()
        if x_t.shape != (cache.mask.shape[0], self.embed_dim):
            raise ValueError(
                f"x_t must have shape {(cache.mask.shape[0], self.embed_dim)}, got {x_t.shape}"
            )
        h = self._step_tokens(x_t, t)
        if self.input_norm is not None:
            h = self.input_norm(h)
        causal = jnp.tril(jnp.ones((NUM_STEP_TOKENS, NUM_STEP_TOKENS), bool))
        batch = x_t.shape[0]
        mask = jnp.concatenate(
            [
                jnp.broadcast_to(
                    cache.mask[:, None, None], (batch, 1, NUM_STEP_TOKENS, cache.mask.shape[1])
                ),
                jnp.broadcast_to(causal, (batch, 1, NUM_STEP_TOKENS, NUM_STEP_TOKENS)),
            ],
            axis=-1,
        )
        for i, block in enumerate(self.blocks):
            h, _, _ = block.step(h, cache.keys[i], cache.values[i], mask)
        return self._readout(h[:, -1])


def sequence_mask(text_mask: Array, num_extra: int, causal: bool = True) -> Array:
    """[B, 1, S, S] bool: causal, and no attention to padded caption tokens (S = L + num_extra)."""
    batch, length = text_mask.shape
    size = length + num_extra
    valid = jnp.concatenate([text_mask, jnp.ones((batch, num_extra), bool)], axis=1)
    order = jnp.tril(jnp.ones((size, size), bool)) if causal else jnp.ones((size, size), bool)
    return order[None, None] & valid[:, None, None, :]
