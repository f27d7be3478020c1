"""The discrete VAE of DALL·E (Ramesh et al. 2021, §2.1 and appendix A): images to a grid of codes
from a vocabulary, and codes back to the parameters of a logit-Laplace likelihood per pixel.

- `DVAEEncoder`: images `[B, H, W, C]` in [0, 1] -> logits `[B, H/f, W/f, vocab]`, f = 2^(groups-1)
  (256×256 -> 32×32 of 8192 at the paper's size).
- `DVAEDecoder`: codes (int `[B, h, w]`, or one-hot / relaxed `[B, h, w, vocab]`) ->
  `[B, h·f, w·f, 2C]`: location μ then log-scale log b of a logit-Laplace per pixel channel.

Both are stacks of groups of residual blocks, widths n_hid·2^g (encoder) and the reverse
(decoder), with 2×2 max-pooling / nearest ×2 upsampling between groups. A block is
`id_path(x) + post_gain · res_path(x)` with post_gain = 1 / (group_count · n_blk_per_group)²,
which keeps the sum of all residual branches small at init instead of zero-initialising them.
The layout follows OpenAI's released `dall_e` package so that its weights port exactly
(`unclip_jax.convert.dvae`).
"""

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import struct

from unclip_jax.models.unet_blocks import upsample
from unclip_jax.nn.linear import conv
from unclip_jax.nn.precision import PrecisionModule
from unclip_jax.sharding import CONV_OUT, FEATURE_MAP, VOCAB, constrain

Array = jax.Array

LOGIT_LAPLACE_EPS = 0.1  # pixels live in [ε, 1 - ε] so that their logits stay finite (§A.3)
ENCODER_KERNELS = (3, 3, 3, 1)  # residual-path convolutions of an encoder block
DECODER_KERNELS = (1, 3, 3, 3)  # and of a decoder block


@dataclasses.dataclass(frozen=True)
class DVAEConfig:
    """Architecture of the dVAE; the defaults are the paper's (256 px -> 32×32 codes of 8192)."""

    group_count: int = 4
    n_hid: int = 256  # width of the first encoder group (last decoder group); group g: n_hid·2^g
    n_blk_per_group: int = 2
    channels: int = 3  # image channels
    vocab_size: int = 8192
    n_init: int = 128  # width of the decoder's input projection of the codes

    def __post_init__(self):
        for name in ("group_count", "n_hid", "n_blk_per_group", "channels", "n_init"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.n_hid % 4:
            raise ValueError(
                f"n_hid must be a multiple of 4 (blocks use n_out/4), got {self.n_hid}"
            )
        if not isinstance(self.vocab_size, int) or self.vocab_size < 2:
            raise ValueError(f"vocab_size must be an integer >= 2, got {self.vocab_size!r}")

    @property
    def widths(self) -> tuple[int, ...]:
        """Encoder group widths, first to last (the decoder runs them in reverse)."""
        return tuple(self.n_hid * 2**g for g in range(self.group_count))

    @property
    def downsample_factor(self) -> int:
        """Image side / code grid side."""
        return 2 ** (self.group_count - 1)

    @property
    def post_gain(self) -> float:
        return 1.0 / (self.group_count * self.n_blk_per_group) ** 2

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "DVAEConfig":
        return cls(**d)


def map_pixels(x: Array) -> Array:
    """[0, 1] -> [ε, 1 - ε]: x ↦ (1 - 2ε)x + ε."""
    return (1 - 2 * LOGIT_LAPLACE_EPS) * x + LOGIT_LAPLACE_EPS


def unmap_pixels(x: Array) -> Array:
    """The inverse of `map_pixels`, clamped to [0, 1]."""
    return jnp.clip((x - LOGIT_LAPLACE_EPS) / (1 - 2 * LOGIT_LAPLACE_EPS), 0.0, 1.0)


def logit_laplace_nll(
    targets: Array,  # [..., C] mapped pixels in (0, 1)
    stats: Array,  # [..., 2C]: location μ then log-scale log b, in logit space
) -> Array:  # [..., C] nats
    """-log f(y; μ, b) elementwise, f(y) = exp(-|logit(y) - μ| / b) / (2b·y(1-y)) (§A.3)."""
    channels = targets.shape[-1]
    if stats.shape[:-1] != targets.shape[:-1] or stats.shape[-1] != 2 * channels:
        raise ValueError(
            f"stats must have shape {(*targets.shape[:-1], 2 * channels)} for targets of shape "
            f"{targets.shape}, got {stats.shape}"
        )
    y = targets.astype(jnp.float32)
    mu, log_b = jnp.split(stats.astype(jnp.float32), 2, axis=-1)
    log_y, log_1my = jnp.log(y), jnp.log1p(-y)
    return jnp.log(2.0) + log_b + log_y + log_1my + jnp.abs(log_y - log_1my - mu) * jnp.exp(-log_b)


class DVAEBlock(PrecisionModule):
    """id_path(x) + post_gain · res_path(x); the residual path is ReLU-conv four times, its hidden
    width out_channels/4, its kernel sizes `kernels`; id_path is a 1×1 conv when widths differ."""

    out_channels: int
    kernels: tuple[int, ...]  # ENCODER_KERNELS or DECODER_KERNELS
    post_gain: float

    @nn.compact
    def __call__(self, x: Array) -> Array:  # [B, H, W, C_in] -> [B, H, W, out_channels]
        skip = x
        if x.shape[-1] != self.out_channels:
            skip = conv(self.out_channels, 1, name="id_path", **self.dtypes)(x)
        widths = (self.out_channels // 4,) * (len(self.kernels) - 1) + (self.out_channels,)
        h = x
        for i, (kernel, width) in enumerate(zip(self.kernels, widths, strict=True)):
            h = conv(width, kernel, name=f"conv_{i + 1}", **self.dtypes)(nn.relu(h))
        return constrain(skip + self.post_gain * h, FEATURE_MAP)


def _check_images(images: Array, config: DVAEConfig) -> None:
    factor = config.downsample_factor
    if (
        images.ndim != 4
        or images.shape[-1] != config.channels
        or images.shape[1] % factor
        or images.shape[2] % factor
    ):
        raise ValueError(
            f"images must be [B, H, W, {config.channels}] with H, W multiples of {factor}, "
            f"got shape {tuple(images.shape)}"
        )


class DVAEEncoder(PrecisionModule):
    """q(z | x): images in [0, 1] -> logits over the vocabulary at each code position.

    Parameters: `input` (7×7 conv), `group_{g}_block_{i}` (g, i from 1), `output` (1×1 conv).
    The output convolution runs in float32 whatever `dtype` (as OpenAI's does), for the softmax.
    """

    config: DVAEConfig

    @nn.compact
    def __call__(self, images: Array) -> Array:  # [B, H, W, C] -> [B, H/f, W/f, vocab]
        cfg = self.config
        _check_images(images, cfg)
        h = conv(cfg.n_hid, 7, name="input", **self.dtypes)(map_pixels(images.astype(jnp.float32)))
        for g, width in enumerate(cfg.widths):
            for i in range(cfg.n_blk_per_group):
                name = f"group_{g + 1}_block_{i + 1}"
                h = DVAEBlock(width, ENCODER_KERNELS, cfg.post_gain, name=name, **self.dtypes)(h)
            if g < cfg.group_count - 1:
                h = nn.max_pool(h, (2, 2), strides=(2, 2))
        h = nn.relu(h).astype(jnp.float32)
        out = conv(cfg.vocab_size, 1, name="output", param_dtype=self.param_dtype)
        return out(h)

    def encode(self, images: Array) -> Array:  # [B, H, W, C] in [0, 1] -> [B, h, w] int32
        """The most likely code at each position (the tokens DALL·E's transformer reads)."""
        return jnp.argmax(self(images), axis=-1).astype(jnp.int32)


class CodeInput(nn.Module):
    """The decoder's 1×1 input convolution over one-hot codes, kernel [vocab, features]: integer
    codes select rows (no one-hot of 8192 channels is built); relaxed codes are contracted."""

    vocab_size: int
    features: int
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, codes: Array) -> Array:  # [B, h, w] int or [B, h, w, vocab] -> [..., F]
        kernel = self.param(
            "kernel",
            nn.with_logical_partitioning(nn.initializers.lecun_normal(), (VOCAB, CONV_OUT)),
            (self.vocab_size, self.features),
            self.param_dtype,
        )
        bias = self.param(
            "bias",
            nn.with_logical_partitioning(nn.initializers.zeros_init(), (CONV_OUT,)),
            (self.features,),
            self.param_dtype,
        )
        kernel, bias = jnp.asarray(kernel, jnp.float32), jnp.asarray(bias, jnp.float32)
        if jnp.issubdtype(codes.dtype, jnp.integer):
            return kernel[codes] + bias
        return jnp.einsum("bhwv,vf->bhwf", codes.astype(jnp.float32), kernel) + bias


class DVAEDecoder(PrecisionModule):
    """p(x | z): codes -> logit-Laplace parameters [B, H, W, 2C] (location, then log-scale).

    Parameters: `input` (`CodeInput`, float32 as OpenAI's), `group_{g}_block_{i}`, `output`.
    """

    config: DVAEConfig

    @nn.compact
    def __call__(
        self,
        codes: Array,  # [B, h, w] int, or [B, h, w, vocab] one-hot / relaxed
    ) -> Array:  # [B, h·f, w·f, 2C] float32
        cfg = self.config
        relaxed = not jnp.issubdtype(codes.dtype, jnp.integer)
        if codes.ndim != 3 + relaxed or (relaxed and codes.shape[-1] != cfg.vocab_size):
            raise ValueError(
                f"codes must be [B, h, w] integers or [B, h, w, {cfg.vocab_size}] floats, "
                f"got shape {tuple(codes.shape)} of {codes.dtype}"
            )
        h = CodeInput(cfg.vocab_size, cfg.n_init, self.param_dtype, name="input")(codes)
        widths = cfg.widths[::-1]
        for g, width in enumerate(widths):
            for i in range(cfg.n_blk_per_group):
                name = f"group_{g + 1}_block_{i + 1}"
                h = DVAEBlock(width, DECODER_KERNELS, cfg.post_gain, name=name, **self.dtypes)(h)
            if g < cfg.group_count - 1:
                h = upsample(h)
        h = conv(2 * cfg.channels, 1, name="output", **self.dtypes)(nn.relu(h))
        return h.astype(jnp.float32)

    def decode(self, codes: Array) -> Array:  # [B, h, w] or [B, h, w, vocab] -> [B, H, W, C]
        """Images in [0, 1]: the sigmoid of the location, unmapped (OpenAI's reconstruction)."""
        mu = self(codes)[..., : self.config.channels]
        return unmap_pixels(jax.nn.sigmoid(mu))


def count_params(config: DVAEConfig) -> dict[str, int]:
    """{"encoder": n, "decoder": n} of `config`, from shapes only (nothing allocated)."""
    f = config.downsample_factor
    images = jax.ShapeDtypeStruct((1, f, f, config.channels), jnp.float32)
    codes = jax.ShapeDtypeStruct((1, 1, 1), jnp.int32)
    key = jax.random.key(0)
    counts = {}
    for name, module, x in (
        ("encoder", DVAEEncoder(config), images),
        ("decoder", DVAEDecoder(config), codes),
    ):
        shapes = jax.eval_shape(module.init, key, x)
        counts[name] = sum(leaf.size for leaf in jax.tree.leaves(nn.unbox(shapes)))
    return counts


@struct.dataclass
class FrozenDVAE:
    """A trained dVAE used only to encode and decode (DALL·E's transformer reads and writes its
    codes): pure methods, parameters as the pytree's leaves, so callers pass it to their jitted
    programs as an argument."""

    config: DVAEConfig = struct.field(pytree_node=False)
    encoder_params: Any = None
    decoder_params: Any = None

    def encode(self, images: Array) -> Array:
        """images [B, H, W, C] in [-1, 1] → codes [B, h·w] int32 in raster order."""
        unit = (jnp.asarray(images, jnp.float32) + 1.0) / 2.0
        codes = DVAEEncoder(self.config).apply(
            {"params": self.encoder_params}, unit, method=DVAEEncoder.encode
        )
        return jax.lax.stop_gradient(codes.reshape(codes.shape[0], -1))

    def decode(self, codes: Array) -> Array:
        """codes [B, h·w] (a square grid, raster order) → images [B, H, W, C] in [-1, 1]."""
        side = math.isqrt(codes.shape[1])
        if side * side != codes.shape[1]:
            raise ValueError(f"codes must fill a square grid, got {codes.shape[1]} per image")
        grid = jnp.asarray(codes, jnp.int32).reshape(codes.shape[0], side, side)
        images = DVAEDecoder(self.config).apply(
            {"params": self.decoder_params}, grid, method=DVAEDecoder.decode
        )
        return images * 2.0 - 1.0
