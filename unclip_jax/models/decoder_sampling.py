"""Sampling the decoder and the upsamplers (unCLIP §2.1, Appendix C).

- `DecoderSampler`: the decoder's guided chain. The conditional half (image embedding and
  caption) and the unconditional half (both dropped to the learned null embeddings) run as ONE
  batch of 2B per step (`diffusion.sampling.Sampler`); guidance acts on the mean channels only,
  the learned variance comes from the conditional half. Paper default: 250 strided steps.
- `UpsamplerSampler`: the super-resolution chain, unguided, conditioned on the low-res image
  (bicubic-upsampled inside the model). Paper defaults: DDIM with 27 steps (64→256) and 15 steps
  (256→1024).

Both compile one program per batch shape: new embeddings, captions, low-res images, keys,
guidance scales, η and step counts (up to `max_steps`) reuse it.

    sampler = DecoderSampler(decoder, SamplerSettings(sampler="ddpm", var_type="learned_range"))
    images = sampler(params, image_embed, key, image_size=64, steps=250, guidance_scale=3.0)
"""

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from unclip_jax.diffusion import gaussian, samplers
from unclip_jax.diffusion.sampling import Sampler, SamplerSettings
from unclip_jax.diffusion.schedules import make_schedule
from unclip_jax.models.unet import CAPTION_INPUTS, Decoder, Upsampler

Array = jax.Array
Params = Any

# Paper step counts (Appendix C): decoder, 64→256 upsampler, 256→1024 upsampler.
DECODER_STEPS = 250
UPSAMPLER256_STEPS = 27
UPSAMPLER1024_STEPS = 15


def decoder_conditioning(
    image_embed: Array, caption: Mapping[str, Array] | None = None
) -> tuple[dict, dict]:
    """(conditional, unconditional) pytrees, leading axis B, for the decoder's guided chain.

    image_embed: [B, D_img]; caption: the decoder's caption inputs (`caption_ids` or
    `caption_states` + `caption_embed`, with `caption_mask`). The unconditional half keeps the
    same values with both drop flags set, so the model substitutes its null embeddings.
    """
    batch = image_embed.shape[0]
    conditional = {
        "image_embed": jnp.asarray(image_embed, jnp.float32),
        "drop_image": jnp.zeros((batch,), bool),
        "drop_caption": jnp.zeros((batch,), bool),
        **{k: jnp.asarray(v) for k, v in (caption or {}).items()},
    }
    unconditional = {
        **conditional,
        "drop_image": jnp.ones((batch,), bool),
        "drop_caption": jnp.ones((batch,), bool),
    }
    return conditional, unconditional


class DecoderSampler:
    """`sampler(params, image_embed, key, *, image_size, caption=None, steps, guidance_scale,
    eta=0.0) -> images [B, S, S, C]` in [-1, 1] (float32).

    settings.var_type must match the decoder's output channels (`learned_range` for 2×C).
    """

    def __init__(self, model: Decoder, settings: SamplerSettings, channels: int = 3):
        expected = gaussian.output_channels(channels, settings.var_type)
        if model.unet.out_channels != expected:
            raise ValueError(
                f"var_type {settings.var_type!r} needs {expected} output channels for "
                f"{channels}-channel images; the decoder has {model.unet.out_channels}"
            )
        self.model = model
        self.channels = channels
        self.settings = settings
        self._sampler = Sampler(self._model_fn, settings)

    def _model_fn(self, params: Params, x: Array, t: Array, cond: dict) -> Array:
        caption = {k: v for k, v in cond.items() if k.startswith("caption_")}
        return self.model.apply(
            {"params": params},
            x,
            t,
            cond["image_embed"],
            drop_image=cond["drop_image"],
            drop_caption=cond["drop_caption"] if caption else None,
            **caption,
        )

    def __call__(
        self,
        params: Params,
        image_embed: Array,  # [B, D_img]
        key: Array,
        *,
        image_size: int,
        caption: Mapping[str, Array] | None = None,
        steps: str | int | Sequence[int] = DECODER_STEPS,
        guidance_scale: float = 1.0,
        eta: float = 0.0,
    ) -> Array:  # [B, image_size, image_size, C]
        given = sorted(k for k in (caption or {}) if k != "caption_mask")
        wanted = sorted(CAPTION_INPUTS[self.model.caption_source])
        if given != wanted:
            raise ValueError(
                f"caption_source {self.model.caption_source!r} takes caption inputs "
                f"{wanted or 'none'}, got {given or 'none'}"
            )
        conditional, unconditional = decoder_conditioning(image_embed, caption)
        shape = (image_embed.shape[0], image_size, image_size, self.channels)
        return self._sampler(
            params,
            conditional,
            unconditional,
            shape,
            key,
            steps=steps,
            guidance_scale=guidance_scale,
            eta=eta,
        )

    def compiled_programs(self) -> int:
        return self._sampler.compiled_programs()


@dataclasses.dataclass(frozen=True)
class UpsamplerSettings:
    schedule: str = "cosine"  # or "linear"
    num_train_steps: int = 1000
    sampler: str = "ddim"  # or "ddpm"
    max_steps: int = 1000  # step counts up to this share one compiled program
    mean_type: str = "eps"  # or "x0", "v"
    clip: str = "static"  # or "none", "dynamic"

    def __post_init__(self):
        SamplerSettings(
            schedule=self.schedule,
            num_train_steps=self.num_train_steps,
            sampler=self.sampler,
            max_steps=self.max_steps,
            mean_type=self.mean_type,
            clip=self.clip,
        )


class UpsamplerSampler:
    """`sampler(params, low_res, key, *, size, steps, eta=0.0, noise_level=None) -> [B, size,
    size, C]` in [-1, 1]: the high-res image given the low-res one [B, h, w, C].

    `noise_level` (a training timestep, for upsamplers trained with noise augmentation) noises
    the low-res image to that level of the training schedule and tells the model so.
    """

    def __init__(self, model: Upsampler, settings: UpsamplerSettings):
        if model.unet.out_channels not in (3, 6):
            raise ValueError(
                f"upsampler output channels must be 3 or 6, got {model.unet.out_channels}"
            )
        self.model = model
        self.settings = settings
        self._train_schedule = make_schedule(settings.schedule, settings.num_train_steps)
        self._chain = jax.jit(self._run_chain, static_argnames=("size",))

    def _run_chain(self, params, low_res, key, schedule, eta, noise_level, *, size):
        settings = self.settings
        noise_key, chain_key, aug_key = jax.random.split(key, 3)
        batch, channels = low_res.shape[0], low_res.shape[-1]
        level = None
        if self.model.noise_level_conditioning:
            level = jnp.full((batch,), noise_level, jnp.int32)
            aug_noise = jax.random.normal(aug_key, low_res.shape, jnp.float32)
            low_res = gaussian.q_sample(self._train_schedule, low_res, level, aug_noise)
        x_T = jax.random.normal(noise_key, (batch, size, size, channels), jnp.float32)

        def denoise(x, t):
            out = self.model.apply({"params": params}, x, low_res, t, level)
            return out[..., :channels]

        extra = {"eta": eta} if settings.sampler == "ddim" else {}
        return samplers.SAMPLERS[settings.sampler](
            denoise,
            schedule,
            x_T,
            chain_key,
            mean_type=settings.mean_type,
            var_type="fixed_small",
            clip=settings.clip,
            **extra,
        )

    def __call__(
        self,
        params: Params,
        low_res: Array,  # [B, h, w, C] in [-1, 1]
        key: Array,
        *,
        size: int,
        steps: str | int | Sequence[int] = UPSAMPLER256_STEPS,
        eta: float = 0.0,
        noise_level: int | None = None,
    ) -> Array:  # [B, size, size, C]
        if low_res.ndim != 4 or low_res.shape[1] > size or low_res.shape[2] > size:
            raise ValueError(
                f"low_res must be [B, h, w, C] with h, w <= {size}, got {low_res.shape}"
            )
        if (noise_level is None) == self.model.noise_level_conditioning:
            raise ValueError(
                "noise_level must be given exactly when the upsampler is conditioned on it "
                f"(noise_level_conditioning={self.model.noise_level_conditioning})"
            )
        level = 0 if noise_level is None else int(noise_level)
        if not 0 <= level < self.settings.num_train_steps:
            raise ValueError(
                f"noise_level must be in [0, {self.settings.num_train_steps}), got {level}"
            )
        if not eta >= 0:
            raise ValueError(f"eta must be >= 0, got {eta}")
        settings = self.settings
        schedule = make_schedule(
            settings.schedule, settings.num_train_steps, steps, max_steps=settings.max_steps
        )
        return self._chain(
            params,
            jnp.asarray(low_res, jnp.float32),
            key,
            schedule,
            jnp.float32(eta),
            jnp.int32(level),
            size=int(size),
        )

    def compiled_programs(self) -> int:
        return self._chain._cache_size()
