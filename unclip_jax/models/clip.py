"""CLIP (Radford et al. 2021, arXiv:2103.00020): a causal text transformer and a ViT image tower
projected into one embedding space.

unCLIP (arXiv:2204.06125, §2) works in this space: the prior maps text embeddings to image
embeddings and the decoder inverts image embeddings. Both towers return the pooled projected
embedding and their per-token states, `(embedding, {"hidden_states": ..., "pooled": ...})`.
Parameter layout and numerics follow the OpenAI/Hugging Face models so that weights port exactly
(`unclip_jax.convert.hf_clip`).
"""

import dataclasses
import math
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from unclip_jax.nn.attention import MultiHeadAttention
from unclip_jax.nn.embedding import position_embedding, token_embedding
from unclip_jax.nn.linear import dense
from unclip_jax.nn.norm import layer_norm
from unclip_jax.nn.precision import PrecisionModule
from unclip_jax.sharding import (
    CONV_IN,
    EMBED,
    HIDDEN,
    JOINT_EMBED,
    MLP,
    TOKENS,
    constrain,
)

Array = jax.Array


def quick_gelu(x: Array) -> Array:
    """The sigmoid approximation of GELU used by the OpenAI CLIP models."""
    return x * jax.nn.sigmoid(1.702 * x)


ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "quick_gelu": quick_gelu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
}

# Where the text tower pools: "eos" = first position of eos_token_id (Hugging Face's rule);
# "argmax" = position of the largest id (the OpenAI rule, kept by Hugging Face for configs whose
# eos_token_id is the legacy value 2).
POOLING: dict[str, Callable[[Array, int], Array]] = {
    "eos": lambda ids, eos_token_id: jnp.argmax((ids == eos_token_id).astype(jnp.int32), axis=-1),
    "argmax": lambda ids, eos_token_id: jnp.argmax(ids, axis=-1),
}


@dataclasses.dataclass(frozen=True)
class TowerConfig:
    """A stack of pre-LN `ResidualBlock`s (`tower_blocks`); defaults: ViT-B/32's text tower."""

    width: int = 512
    layers: int = 12
    heads: int = 8
    mlp_dim: int = 2048
    act: str = "quick_gelu"  # a key of ACTIVATIONS
    layer_norm_eps: float = 1e-5

    def __post_init__(self):
        if self.act not in ACTIVATIONS:
            raise ValueError(f"act must be one of {sorted(ACTIVATIONS)}, got {self.act!r}")
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not divisible by heads {self.heads}")


@dataclasses.dataclass(frozen=True)
class TextConfig(TowerConfig):
    vocab_size: int = 49408
    context_length: int = 77
    eos_token_id: int = 49407
    pooling: str = "eos"  # a key of POOLING

    def __post_init__(self):
        super().__post_init__()
        if self.pooling not in POOLING:
            raise ValueError(f"pooling must be one of {sorted(POOLING)}, got {self.pooling!r}")


@dataclasses.dataclass(frozen=True)
class VisionConfig(TowerConfig):
    width: int = 768  # ViT-B/32's image tower
    heads: int = 12
    mlp_dim: int = 3072
    image_size: int = 224
    patch_size: int = 32
    channels: int = 3

    def __post_init__(self):
        super().__post_init__()
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}"
            )


@dataclasses.dataclass(frozen=True)
class CLIPConfig:
    text: TextConfig = TextConfig()
    vision: VisionConfig = VisionConfig()
    projection_dim: int = 512
    logit_scale_init: float = math.log(1 / 0.07)
    max_logit_scale: float = 100.0  # the temperature cap of CLIP's training recipe

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "CLIPConfig":
        d = dict(d)
        return cls(text=TextConfig(**d.pop("text")), vision=VisionConfig(**d.pop("vision")), **d)


def _variant(
    embed: int,
    image: int,
    patch: int,
    v_width: int,
    v_layers: int,
    t_width: int,
    t_layers: int,
    *,
    heads: int | None = None,  # default: OpenAI's 64-wide heads
    mlp_dim: int | None = None,  # default: OpenAI's 4 × width
    act: str = "quick_gelu",
    **text,  # further TextConfig fields
) -> CLIPConfig:
    def tower(width: int) -> dict:
        return dict(width=width, heads=heads or width // 64, mlp_dim=mlp_dim or 4 * width, act=act)

    return CLIPConfig(
        text=TextConfig(layers=t_layers, **tower(t_width), **text),
        vision=VisionConfig(image_size=image, patch_size=patch, layers=v_layers, **tower(v_width)),
        projection_dim=embed,
    )


# Tiny variants for tests and the 32 px synthetic set; end-of-text is id 2 as in the trained BPE
# (unclip_jax.text.bpe).
_TINY = dict(heads=4, eos_token_id=2)

VARIANTS: dict[str, CLIPConfig] = {
    "B/32": _variant(512, 224, 32, 768, 12, 512, 12),
    "B/16": _variant(512, 224, 16, 768, 12, 512, 12),
    "L/14": _variant(768, 224, 14, 1024, 24, 768, 12),
    "L/14-336": _variant(768, 336, 14, 1024, 24, 768, 12),
    "H/14": _variant(1024, 224, 14, 1280, 32, 1024, 24, act="gelu"),  # OpenCLIP's LAION ViT-H/14
    "tiny": _variant(
        16, 32, 8, 32, 2, 32, 2, mlp_dim=64, vocab_size=512, context_length=16, **_TINY
    ),
    "tiny-shapes": _variant(
        64, 32, 4, 64, 3, 64, 2, mlp_dim=256, vocab_size=256, context_length=32, **_TINY
    ),
}


def clip_config(variant: str) -> CLIPConfig:
    """The CLIPConfig of a named variant ("B/32", "L/14", "tiny", ...)."""
    if variant not in VARIANTS:
        raise ValueError(f"CLIP variant must be one of {sorted(VARIANTS)}, got {variant!r}")
    return VARIANTS[variant]


def _layer_norm(eps: float, *, name: str, dtype, param_dtype) -> nn.LayerNorm:
    """LayerNorm with PyTorch's two-pass variance, as the ported models were trained with."""
    return layer_norm(eps, name=name, fast_variance=False, dtype=dtype, param_dtype=param_dtype)


class ResidualBlock(PrecisionModule):
    """Pre-LN transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x)); states constrained to
    `TOKENS`, the MLP's hidden layer to `HIDDEN`. Also the block of the GLIDE-style caption
    encoder (`caption_transformer`), whose attention is named "attention"."""

    heads: int
    mlp_dim: int
    act: str  # a key of ACTIVATIONS
    layer_norm_eps: float
    attention_name: str = "attn"
    fast_variance: bool = False  # True: LayerNorm's E[x²] − E[x]²; False: PyTorch's two passes

    @nn.compact
    def __call__(
        self,
        x: Array,  # [B, L, D]
        mask: Array | None = None,  # bool [B, 1, 1, L] (keys)
        is_causal: bool = False,
    ) -> Array:  # [B, L, D]
        norm = dict(fast_variance=self.fast_variance, **self.dtypes)
        h = layer_norm(self.layer_norm_eps, name="ln_1", **norm)(x)
        x = x + MultiHeadAttention(self.heads, name=self.attention_name, **self.dtypes)(
            h, mask=mask, is_causal=is_causal
        )
        h = layer_norm(self.layer_norm_eps, name="ln_2", **norm)(constrain(x, TOKENS))
        h = constrain(dense(self.mlp_dim, (EMBED, MLP), name="fc1", **self.dtypes)(h), HIDDEN)
        h = dense(x.shape[-1], (MLP, EMBED), name="fc2", **self.dtypes)(ACTIVATIONS[self.act](h))
        return constrain(x + h, TOKENS)


def tower_blocks(
    x: Array,  # [B, L, D]
    tower: TowerConfig,
    mask: Array | None = None,  # bool [B, 1, 1, L] (keys)
    is_causal: bool = False,
    **block,  # ResidualBlock's other fields: dtypes, attention_name, fast_variance
) -> Array:  # [B, L, D]
    """The tower's `layers` blocks, named block_0 …, made in the calling module's compact
    `__call__`."""
    for i in range(tower.layers):
        x = ResidualBlock(
            tower.heads, tower.mlp_dim, tower.act, tower.layer_norm_eps, name=f"block_{i}", **block
        )(x, mask=mask, is_causal=is_causal)
    return x


def _projected(
    hidden: Array,  # [B, L, D]
    pooled: Array,  # [B, D]
    projection_dim: int,
    **dtypes,
) -> tuple[Array, dict[str, Array]]:  # [B, P] float32, {hidden_states, pooled}
    """A tower's output: `pooled` through the bias-free `projection` into the joint space, made
    in the calling tower's compact `__call__`."""
    projection = dense(
        projection_dim, (EMBED, JOINT_EMBED), name="projection", use_bias=False, **dtypes
    )
    return projection(pooled).astype(jnp.float32), {"hidden_states": hidden, "pooled": pooled}


class TextTransformer(PrecisionModule):
    """Token + learned position embeddings, causal pre-LN blocks, final LN, EOT pooling,
    projection."""

    config: TextConfig
    projection_dim: int

    @nn.compact
    def __call__(
        self,
        ids: Array,  # int [B, L], L <= context_length
        mask: Array | None = None,  # [B, L], nonzero on real tokens; None = all real
    ) -> tuple[Array, dict[str, Array]]:  # [B, P] float32, {hidden_states: [B, L, D], pooled}
        cfg = self.config
        if ids.ndim != 2 or ids.shape[1] > cfg.context_length:
            raise ValueError(
                f"token ids must be [batch, length <= {cfg.context_length}], got shape {ids.shape}"
            )
        if mask is not None and mask.shape != ids.shape:
            raise ValueError(f"mask shape {mask.shape} must equal ids shape {ids.shape}")
        x = token_embedding(cfg.vocab_size, cfg.width, name="token_embedding", **self.dtypes)(ids)
        positions = position_embedding(self, cfg.context_length, cfg.width)
        x = x + positions[: ids.shape[1]].astype(self.dtype)
        key_mask = None if mask is None else mask.astype(bool)[:, None, None, :]
        x = tower_blocks(x, cfg, key_mask, is_causal=True, **self.dtypes)
        hidden = _layer_norm(cfg.layer_norm_eps, name="ln_final", **self.dtypes)(x)
        eot = POOLING[cfg.pooling](ids, cfg.eos_token_id)  # [B]
        pooled = jnp.take_along_axis(hidden, eot[:, None, None], axis=1)[:, 0]  # [B, D]
        return _projected(hidden, pooled, self.projection_dim, **self.dtypes)


class VisionTransformer(PrecisionModule):
    """ViT: patch embedding, class token, position embeddings, pre-LN, blocks, post-LN on the class
    token, projection."""

    config: VisionConfig
    projection_dim: int

    @nn.compact
    def __call__(
        self,
        images: Array,  # [B, S, S, C], normalised with CLIP's mean/std (clip_preprocessing)
    ) -> tuple[Array, dict[str, Array]]:  # [B, P] float32, {hidden_states: [B, 1+N, D], pooled}
        cfg = self.config
        size, patch, channels = cfg.image_size, cfg.patch_size, cfg.channels
        if images.ndim != 4 or images.shape[1:] != (size, size, channels):
            raise ValueError(
                f"images must be [batch, {size}, {size}, {channels}] (NHWC, resized and "
                f"normalised by clip_preprocess), got shape {tuple(images.shape)}"
            )
        batch, grid = images.shape[0], size // patch
        patches = images.reshape(batch, grid, patch, grid, patch, channels)
        patches = patches.transpose(0, 1, 3, 2, 4, 5).reshape(batch, grid * grid, -1)
        x = dense(
            cfg.width, (CONV_IN, EMBED), name="patch_embedding", use_bias=False, **self.dtypes
        )(patches)  # [B, N, D]; a stride-`patch` convolution, kernel [p*p*C, D]
        class_embedding = self.param(
            "class_embedding",
            nn.with_logical_partitioning(nn.initializers.normal(cfg.width**-0.5), (EMBED,)),
            (cfg.width,),
            self.param_dtype,
        )
        positions = position_embedding(self, grid * grid + 1, cfg.width, cfg.width**-0.5)
        cls = jnp.broadcast_to(class_embedding.astype(x.dtype), (batch, 1, cfg.width))
        x = jnp.concatenate([cls, x], axis=1) + positions.astype(x.dtype)
        x = _layer_norm(cfg.layer_norm_eps, name="ln_pre", **self.dtypes)(x)
        hidden = tower_blocks(x, cfg, **self.dtypes)
        pooled = _layer_norm(cfg.layer_norm_eps, name="ln_post", **self.dtypes)(hidden[:, 0])
        return _projected(hidden, pooled, self.projection_dim, **self.dtypes)


def normalize(x: Array) -> Array:
    """x / ||x|| along the last axis."""
    return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


class CLIP(PrecisionModule):
    """Both towers and the learnable log-temperature `logit_scale`.

    `model.apply(params, ids, mask, method=CLIP.encode_text)` and
    `model.apply(params, images, method=CLIP.encode_image)` run one tower.
    """

    config: CLIPConfig

    def setup(self):
        self.text = TextTransformer(self.config.text, self.config.projection_dim, **self.dtypes)
        self.vision = VisionTransformer(
            self.config.vision, self.config.projection_dim, **self.dtypes
        )
        self.logit_scale = self.param(
            "logit_scale",
            nn.with_logical_partitioning(
                nn.initializers.constant(self.config.logit_scale_init), ()
            ),
            (),
            jnp.float32,
        )

    def encode_text(self, ids: Array, mask: Array | None = None) -> tuple[Array, dict]:
        """ids, mask: [B, L] -> ([B, P], {hidden_states: [B, L, Dt], pooled: [B, Dt]})."""
        return self.text(ids, mask)

    def encode_image(self, images: Array) -> tuple[Array, dict]:
        """images: [B, S, S, C] -> ([B, P], {hidden_states: [B, 1+N, Dv], pooled: [B, Dv]})."""
        return self.vision(images)

    def __call__(
        self,
        ids: Array,  # int [Bt, L]
        images: Array,  # [Bi, S, S, C]
        mask: Array | None = None,  # [Bt, L]
    ) -> tuple[Array, dict[str, Array]]:  # logits_per_image [Bi, Bt], aux
        """Image-text logits: exp(min(logit_scale, log max_logit_scale)) · cos(z_i, z_t)."""
        text_embeds, text_aux = self.encode_text(ids, mask)
        image_embeds, image_aux = self.encode_image(images)
        scale = jnp.exp(jnp.minimum(self.logit_scale, math.log(self.config.max_logit_scale)))
        logits = scale * normalize(image_embeds) @ normalize(text_embeds).T
        return logits, {
            "text_embeds": text_embeds,
            "image_embeds": image_embeds,
            "text_hidden_states": text_aux["hidden_states"],
            "image_hidden_states": image_aux["hidden_states"],
            "logit_scale": self.logit_scale,
        }


def count_params(config: CLIPConfig) -> int:
    """Number of parameters of `config`, from shapes only (nothing allocated)."""
    model = CLIP(config)
    text, vision = config.text, config.vision
    shapes = jax.eval_shape(
        model.init,
        jax.random.key(0),
        jnp.zeros((1, text.context_length), jnp.int32),
        jnp.zeros((1, vision.image_size, vision.image_size, vision.channels), jnp.float32),
    )
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(nn.unbox(shapes)))
