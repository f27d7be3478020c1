"""Multi-head attention with optional extra key/value tokens (jax.nn.dot_product_attention).

The extra tokens are how conditioning enters attention in GLIDE/unCLIP (caption and image-embedding
tokens prepended to the keys and values) and in diffusers' `AttnAddedKVProcessor`.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from unclip_jax.sharding import EMBED, HEAD_DIM, HEADS

Array = jax.Array


class _Projection(nn.Module):
    """y = x · kernel + bias, contracting the last `len(in_names)` axes of x.

    The kernel is created at its full rank (e.g. [D, H, Dh]), so that its logical axis names
    apply to it under a mesh (`nn.DenseGeneral` initialises a flattened 2-D kernel, on which a
    3-name sharding constraint fails). Initialisation matches DenseGeneral's: LeCun normal over
    the contracted fan-in, zero bias.
    """

    features: tuple[int, ...]
    in_names: tuple[str, ...]  # logical names of the contracted input axes
    out_names: tuple[str, ...]  # logical names of the feature axes
    use_bias: bool = True
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        n_in, n_out = len(self.in_names), len(self.features)
        shape = (*x.shape[x.ndim - n_in :], *self.features)
        init = nn.initializers.lecun_normal(
            in_axis=tuple(range(n_in)), out_axis=tuple(range(n_in, n_in + n_out))
        )
        kernel = self.param(
            "kernel",
            nn.with_logical_partitioning(init, (*self.in_names, *self.out_names)),
            shape,
            self.param_dtype,
        )
        y = jax.lax.dot_general(
            x.astype(self.dtype),
            jnp.asarray(kernel, self.dtype),
            ((tuple(range(x.ndim - n_in, x.ndim)), tuple(range(n_in))), ((), ())),
        )
        if self.use_bias:
            bias = self.param(
                "bias",
                nn.with_logical_partitioning(nn.initializers.zeros_init(), self.out_names),
                self.features,
                self.param_dtype,
            )
            y = y + jnp.asarray(bias, self.dtype)
        return y


def _dense(features, in_names, out_names, *, name, **common):
    features = (features,) if isinstance(features, int) else tuple(features)
    return _Projection(features, in_names, out_names, name=name, **common)


class MultiHeadAttention(nn.Module):
    """Softmax attention; `context` defaults to `x` (self-attention).

    Projections are named `query`, `key`, `value`, `out` and, for the extra tokens,
    `extra_key`, `extra_value`; kernels are [D, H, Dh] (inputs) and [H, Dh, D_out] (output).
    """

    num_heads: int
    head_dim: int | None = None  # default: width // num_heads
    out_features: int | None = None  # default: width of x
    use_bias: bool = True
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

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
        common = dict(use_bias=self.use_bias, dtype=self.dtype, param_dtype=self.param_dtype)
        in_names = ((EMBED,), (HEADS, HEAD_DIM))
        query = _dense(heads, *in_names, name="query", **common)(x)
        key = _dense(heads, *in_names, name="key", **common)(context)
        value = _dense(heads, *in_names, name="value", **common)(context)
        if extra_tokens is not None:
            extra_key = _dense(heads, *in_names, name="extra_key", **common)(extra_tokens)
            extra_value = _dense(heads, *in_names, name="extra_value", **common)(extra_tokens)
            key = jnp.concatenate([extra_key, key], axis=1)
            value = jnp.concatenate([extra_value, value], axis=1)
        attended = jax.nn.dot_product_attention(
            query, key, value, mask=mask, is_causal=is_causal
        )  # [B, Lq, H, Dh]
        return _dense(
            self.out_features or width, (HEADS, HEAD_DIM), (EMBED,), name="out", **common
        )(attended)
