"""The ADM/GLIDE U-Net family of unCLIP: the 64×64 decoder and the two upsamplers (unCLIP §2.1).

- `UNet`: the network itself. Levels of residual blocks at decreasing resolution (BigGAN-style
  residual down/up-sampling between them), a middle block, skip connections, attention at chosen
  levels whose keys/values are extended with conditioning tokens.
- `Decoder`: `UNet` conditioned on a CLIP image embedding and a caption (`DecoderConditioning`),
  the caption encoded by a GLIDE-style transformer trained with it or given as CLIP token states
  (Karlo's choice); learned-variance output (2×C channels).
- `Upsampler`: `UNet` on the noisy high-res image concatenated with the bicubic-upsampled low-res
  image; no attention, no caption; optionally conditioned on the noise-augmentation level. Fully
  convolutional: trained on crops, run at full size.

All three return the plain network output `[B, H, W, out_channels]` (eps, or eps and the variance
interpolation v for learned variance, split on the last axis).
The layout mirrors diffusers' `UNet2DConditionModel` / `UNet2DModel` with ResnetDownsample /
SimpleCrossAttn blocks so that Karlo's weights port exactly (`unclip_jax.convert.diffusers_unet`).
"""

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from unclip_jax.models.caption_transformer import CaptionTransformer, CaptionTransformerConfig
from unclip_jax.models.decoder_conditioning import DecoderConditioning
from unclip_jax.models.unet_blocks import AttentionBlock, ResBlock, TimeEmbedding
from unclip_jax.nn.linear import conv
from unclip_jax.nn.norm import group_norm
from unclip_jax.nn.precision import PrecisionModule, parse_dtypes
from unclip_jax.nn.resize import bicubic_resize
from unclip_jax.sharding import FEATURE_MAP, REMAT_POLICIES, constrain, remat

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class UNetConfig:
    """Architecture of one U-Net; level 0 is the input resolution, each next level is half."""

    out_channels: int = 6  # 2×C for learned variance
    base_channels: int = 128
    channel_mults: tuple[int, ...] = (1, 2, 3, 4)
    num_res_blocks: int = 3  # per level on the way down (one more on the way up)
    attention_levels: tuple[int, ...] = (1, 2, 3)  # levels with attention after every block
    mid_attention: bool = True
    head_dim: int = 64
    dropout: float = 0.0
    groups: int = 32
    norm_eps: float = 1e-5
    scale_shift: bool = True  # timestep embedding as GroupNorm scale-shift (else additive)
    remat: str = "none"  # per-block rematerialisation, a key of sharding.REMAT_POLICIES

    def __post_init__(self):
        if self.remat not in REMAT_POLICIES:
            raise ValueError(f"remat must be one of {sorted(REMAT_POLICIES)}, got {self.remat!r}")
        object.__setattr__(self, "channel_mults", tuple(self.channel_mults))
        object.__setattr__(self, "attention_levels", tuple(self.attention_levels))
        levels = len(self.channel_mults)
        bad = [a for a in self.attention_levels if not 0 <= a < levels]
        if bad:
            raise ValueError(f"attention_levels must be in [0, {levels}), got {bad}")
        for width in self.widths:
            if width % self.groups:
                raise ValueError(f"channels {width} are not divisible by groups {self.groups}")
        attended = [self.widths[a] for a in self.attention_levels]
        attended += [self.widths[-1]] if self.mid_attention else []
        if any(w % self.head_dim for w in attended):
            raise ValueError(f"attended widths {attended} must be multiples of {self.head_dim}")

    @property
    def widths(self) -> tuple[int, ...]:
        return tuple(self.base_channels * m for m in self.channel_mults)

    @property
    def time_embed_dim(self) -> int:
        return 4 * self.base_channels


class UNet(PrecisionModule):
    """eps-prediction U-Net; parameter names follow the levels: `down_{level}_{block}`, etc."""

    config: UNetConfig

    @nn.compact
    def __call__(
        self,
        x: Array,  # [B, H, W, C_in]
        t: Array,  # [B] timesteps
        added_emb: Array | None = None,  # [B, 4·base], added to the timestep embedding
        context: Array | None = None,  # [B, L, D] tokens extending attention keys/values
        context_mask: Array | None = None,  # [B, L] bool, False = ignored
        deterministic: bool = True,
    ) -> Array:  # [B, H, W, out_channels]
        cfg = self.config
        factor = 2 ** (len(cfg.widths) - 1)
        if x.ndim != 4 or x.shape[1] % factor or x.shape[2] % factor:
            raise ValueError(
                f"x must be [B, H, W, C] with H, W multiples of {factor}, got {x.shape}"
            )
        block = dict(
            scale_shift=cfg.scale_shift, groups=cfg.groups, eps=cfg.norm_eps, **self.dtypes
        )
        attn = dict(head_dim=cfg.head_dim, groups=cfg.groups, eps=cfg.norm_eps, **self.dtypes)

        res_block = remat(ResBlock, cfg.remat, static_argnums=(3,))  # `deterministic` static
        attention_block = remat(AttentionBlock, cfg.remat)

        def res(width, name, resample="none"):
            return res_block(width, resample, dropout=cfg.dropout, name=name, **block)

        emb = TimeEmbedding(
            cfg.base_channels, cfg.time_embed_dim, name="time_embed", **self.dtypes
        )(t)
        if added_emb is not None:
            emb = emb + added_emb.astype(emb.dtype)
        h = conv(cfg.base_channels, 3, name="conv_in", **self.dtypes)(x.astype(self.dtype))
        h = constrain(h, FEATURE_MAP)
        skips = [h]
        for level, width in enumerate(cfg.widths):
            for i in range(cfg.num_res_blocks):
                h = res(width, f"down_{level}_{i}")(h, emb, deterministic)
                if level in cfg.attention_levels:
                    h = attention_block(name=f"down_{level}_{i}_attn", **attn)(
                        h, context, context_mask
                    )
                skips.append(h)
            if level < len(cfg.widths) - 1:
                h = res(width, f"down_{level}_downsample", "down")(h, emb, deterministic)
                skips.append(h)
        h = res(cfg.widths[-1], "mid_0")(h, emb, deterministic)
        if cfg.mid_attention:
            h = attention_block(name="mid_attn", **attn)(h, context, context_mask)
        h = res(cfg.widths[-1], "mid_1")(h, emb, deterministic)
        for level in reversed(range(len(cfg.widths))):
            width = cfg.widths[level]
            for i in range(cfg.num_res_blocks + 1):
                h = jnp.concatenate([h, skips.pop()], axis=-1)
                h = res(width, f"up_{level}_{i}")(h, emb, deterministic)
                if level in cfg.attention_levels:
                    h = attention_block(name=f"up_{level}_{i}_attn", **attn)(
                        h, context, context_mask
                    )
            if level > 0:
                h = res(width, f"up_{level}_upsample", "up")(h, emb, deterministic)
        h = nn.silu(group_norm(cfg.groups, cfg.norm_eps, name="norm_out", **self.dtypes)(h))
        h = conv(cfg.out_channels, 3, name="conv_out", zero=True, **self.dtypes)(h)
        return constrain(h, FEATURE_MAP)


# Where the caption encodings come from -> the caption inputs the decoder then takes.
CAPTION_INPUTS: dict[str, tuple[str, ...]] = {
    "transformer": ("caption_ids",),  # GLIDE-style transformer trained with the decoder
    "clip": ("caption_states", "caption_embed"),  # CLIP token states + pooled embedding (Karlo)
    "none": (),  # image embedding only
}


class Decoder(PrecisionModule):
    """p(x | z_i, y): the U-Net conditioned on a CLIP image embedding and a caption (unCLIP §2.1).

    `caption_source`: "transformer" encodes `caption_ids` with the GLIDE-style caption transformer
    trained with the decoder; "clip" takes CLIP's `caption_states` [B, L, D] and pooled
    `caption_embed` [B, D] (Karlo); "none" conditions on the image embedding alone.
    `drop_image` / `drop_caption` [B] bool substitute the learned null embeddings (guidance).
    """

    unet: UNetConfig
    context_dim: int
    num_image_tokens: int = 4
    caption_source: str = "transformer"  # a key of CAPTION_INPUTS
    caption_transformer: CaptionTransformerConfig | None = None  # for "transformer"

    @nn.compact
    def __call__(
        self,
        x: Array,  # [B, H, W, C]
        t: Array,  # [B]
        image_embed: Array,  # [B, D_img]
        *,
        caption_ids: Array | None = None,  # [B, L] int ("transformer")
        caption_states: Array | None = None,  # [B, L, D_cap] ("clip")
        caption_embed: Array | None = None,  # [B, D_cap] ("clip")
        caption_mask: Array | None = None,  # [B, L] bool, False at padding
        drop_image: Array | None = None,  # [B] bool
        drop_caption: Array | None = None,  # [B] bool
        deterministic: bool = True,
    ) -> Array:  # [B, H, W, out_channels]
        self._check_caption(caption_ids, caption_states, caption_embed)
        if self.caption_source == "transformer":
            if caption_mask is None:
                caption_mask = jnp.ones(caption_ids.shape, bool)
            caption_states, caption_embed = CaptionTransformer(
                self.caption_transformer, name="caption_transformer", **self.dtypes
            )(caption_ids, caption_mask)
        added, context, context_mask = DecoderConditioning(
            self.unet.time_embed_dim,
            self.context_dim,
            self.num_image_tokens,
            name="conditioning",
            **self.dtypes,
        )(image_embed, caption_embed, caption_states, caption_mask, drop_image, drop_caption)
        return UNet(self.unet, name="unet", **self.dtypes)(
            x, t, added, context, context_mask, deterministic=deterministic
        )

    def _check_caption(self, caption_ids, caption_states, caption_embed) -> None:
        if self.caption_source not in CAPTION_INPUTS:
            raise ValueError(
                f"caption_source must be one of {sorted(CAPTION_INPUTS)}, "
                f"got {self.caption_source!r}"
            )
        if self.caption_source == "transformer" and self.caption_transformer is None:
            raise ValueError('caption_source "transformer" needs a caption_transformer config')
        given = dict(
            caption_ids=caption_ids, caption_states=caption_states, caption_embed=caption_embed
        )
        have = sorted(k for k, v in given.items() if v is not None)
        want = sorted(CAPTION_INPUTS[self.caption_source])
        if have != want:
            raise ValueError(
                f"caption_source {self.caption_source!r} takes {want or 'no caption'}, "
                f"got {have or 'none'}"
            )


class Upsampler(PrecisionModule):
    """Super-resolution U-Net: input = [noisy high-res, bicubic-upsampled low-res] on channels.

    `low_res` of the high-res size is used as is (identity resize): training on crops passes the
    crop of the already upsampled image. With `noise_level_conditioning`, the noise-augmentation
    level [B] of the conditioning image is embedded and added to the timestep embedding.
    """

    unet: UNetConfig
    noise_level_conditioning: bool = False
    antialias: bool = True  # as diffusers' unCLIP pipeline

    @nn.compact
    def __call__(
        self,
        x: Array,  # [B, H, W, C] noisy high-res
        low_res: Array,  # [B, h, w, C]
        t: Array,  # [B]
        noise_level: Array | None = None,  # [B]
        deterministic: bool = True,
    ) -> Array:  # [B, H, W, out_channels]
        if (noise_level is None) == self.noise_level_conditioning:
            raise ValueError(
                f"noise_level must be given exactly when noise_level_conditioning is on "
                f"(noise_level_conditioning={self.noise_level_conditioning})"
            )
        upsampled = bicubic_resize(low_res, x.shape[1:3], self.antialias)
        added = None
        if self.noise_level_conditioning:
            added = TimeEmbedding(
                self.unet.base_channels,
                self.unet.time_embed_dim,
                name="noise_level_embed",
                **self.dtypes,
            )(noise_level)
        inputs = jnp.concatenate([x, upsampled.astype(x.dtype)], axis=-1)
        return UNet(self.unet, name="unet", **self.dtypes)(
            inputs, t, added, deterministic=deterministic
        )


def decoder_from_config(model: Mapping[str, Any]) -> Decoder:
    """A `Decoder` from a config's `model` section (`configs/decoder_paper.py` shows the fields)."""
    model = parse_dtypes(model)
    caption = model.pop("caption_transformer", None)
    return Decoder(
        unet=UNetConfig(**model.pop("unet")),
        caption_transformer=CaptionTransformerConfig(**caption) if caption else None,
        **model,
    )


def upsampler_from_config(model: Mapping[str, Any]) -> Upsampler:
    """An `Upsampler` from a config's `model` section (`configs/upsampler256_paper.py`)."""
    model = parse_dtypes(model)
    return Upsampler(unet=UNetConfig(**model.pop("unet")), **model)
