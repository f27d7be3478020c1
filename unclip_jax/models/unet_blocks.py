"""Building blocks of the ADM/GLIDE U-Net (Dhariwal & Nichol 2021; Nichol et al. 2021).

Residual blocks with the timestep embedding as an additive bias or a GroupNorm scale-shift,
BigGAN-style up/down-sampling inside residual blocks, and spatial self-attention whose keys and
values are extended with conditioning tokens (unCLIP §2.1). The numerics follow diffusers'
`ResnetBlock2D` and `Attention` + `AttnAddedKVProcessor` so that Karlo's weights port exactly.
"""

import dataclasses
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from unclip_jax.nn.attention import MultiHeadAttention
from unclip_jax.nn.embedding import timestep_embedding
from unclip_jax.nn.linear import conv, dense
from unclip_jax.nn.norm import group_norm
from unclip_jax.nn.precision import PrecisionModule
from unclip_jax.sharding import CONV_OUT, EMBED, FEATURE_MAP, MLP, constrain

Array = jax.Array


def downsample(x: Array) -> Array:
    """2×2 average pooling; x: [B, H, W, C] -> [B, H/2, W/2, C]."""
    b, h, w, c = x.shape
    return x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


def upsample(x: Array) -> Array:
    """Nearest-neighbour ×2; x: [B, H, W, C] -> [B, 2H, 2W, C]."""
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


RESAMPLE: dict[str, Callable[[Array], Array]] = {
    "none": lambda x: x,
    "down": downsample,
    "up": upsample,
}


class UNetBlock(PrecisionModule):
    """A block whose GroupNorms take the U-Net's `groups` and `eps` (keyword-only fields, as the
    dtypes)."""

    groups: int = dataclasses.field(default=32, kw_only=True)
    eps: float = dataclasses.field(default=1e-5, kw_only=True)

    def norm(self, name: str) -> nn.GroupNorm:
        """The block's GroupNorm `name` over [..., C]."""
        return group_norm(self.groups, self.eps, name=name, **self.dtypes)


class ResBlock(UNetBlock):
    """GroupNorm-SiLU-conv twice, conditioned on the embedding; BigGAN-style resampling inside.

    With `scale_shift` the embedding gives a scale and shift applied after the second GroupNorm
    (ADM's `use_scale_shift_norm`); otherwise it is added before it. The output is constrained
    to `FEATURE_MAP` (batch over data × fsdp, channels over tensor).
    """

    out_channels: int
    resample: str = "none"  # a key of RESAMPLE
    scale_shift: bool = True
    dropout: float = 0.0

    @nn.compact
    def __call__(
        self,
        x: Array,  # [B, H, W, C_in]
        emb: Array,  # [B, E]
        deterministic: bool = True,
    ) -> Array:  # [B, H', W', out_channels]
        resample = RESAMPLE[self.resample]
        h = nn.silu(self.norm("norm1")(x))
        h, x = resample(h), resample(x)
        # Every convolution's output keeps the batch split (FEATURE_MAP): under FSDP the
        # partitioner then gathers the kernel, not the batch, for the convolution.
        h = constrain(conv(self.out_channels, 3, name="conv1", **self.dtypes)(h), FEATURE_MAP)
        width = 2 * self.out_channels if self.scale_shift else self.out_channels
        e = dense(width, (EMBED, CONV_OUT), name="emb_proj", **self.dtypes)(nn.silu(emb))
        e = e[:, None, None, :]
        norm2 = self.norm("norm2")
        if self.scale_shift:
            scale, shift = jnp.split(e, 2, axis=-1)
            h = norm2(h) * (1 + scale) + shift
        else:
            h = norm2(h + e)
        h = nn.Dropout(self.dropout)(nn.silu(h), deterministic=deterministic)
        h = constrain(
            conv(self.out_channels, 3, name="conv2", zero=True, **self.dtypes)(h), FEATURE_MAP
        )
        if x.shape[-1] != self.out_channels:
            x = constrain(conv(self.out_channels, 1, name="skip", **self.dtypes)(x), FEATURE_MAP)
        return constrain(x + h, FEATURE_MAP)


class AttentionBlock(UNetBlock):
    """Spatial self-attention whose keys/values are extended with conditioning tokens.

    The tokens (unCLIP's 4 image-embedding tokens and the caption encodings) are projected by
    `extra_key`/`extra_value` and prepended to the keys and values of the H·W positions. The
    output is constrained to `FEATURE_MAP`.
    """

    head_dim: int = 64

    @nn.compact
    def __call__(
        self,
        x: Array,  # [B, H, W, C]
        context: Array | None = None,  # [B, L, D]
        context_mask: Array | None = None,  # [B, L] bool, False = ignored (padding)
    ) -> Array:  # [B, H, W, C]
        b, height, width, channels = x.shape
        h = self.norm("norm")(x)
        h = h.reshape(b, height * width, channels)
        mask = None
        if context is not None and context_mask is not None:
            keys = jnp.concatenate([context_mask, jnp.ones((b, height * width), bool)], axis=1)
            mask = keys[:, None, None, :]
        h = MultiHeadAttention(channels // self.head_dim, name="attention", **self.dtypes)(
            h, extra_tokens=context, mask=mask
        )
        return constrain(x + h.reshape(b, height, width, channels), FEATURE_MAP)


class TimeEmbedding(PrecisionModule):
    """Sinusoidal features of t through a two-layer SiLU MLP; t: [B] -> [B, width]."""

    features: int  # sinusoid size (the U-Net's base channels in ADM)
    width: int

    @nn.compact
    def __call__(self, t: Array) -> Array:
        h = dense(self.width, (EMBED, MLP), name="linear_1", **self.dtypes)(
            timestep_embedding(t, self.features)
        )
        return dense(self.width, (MLP, EMBED), name="linear_2", **self.dtypes)(nn.silu(h))
