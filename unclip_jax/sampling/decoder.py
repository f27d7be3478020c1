"""The decoder's and the upsamplers' sampling chains (unCLIP §2.1, Appendix C): one jitted program
per batch shape, used alike by the pipeline, the training previews and the benchmarks.

- `DecoderChain`: classifier-free guided; the conditional half (image embedding and caption) and
  the unconditional half (both dropped to the model's learned null embeddings) run as ONE batch
  of 2B per step, guidance acts on the mean channels only, a learned variance comes from the
  conditional half. The stage's sampler decides the steps: `ddim` (with η) or `ddpm` (ancestral,
  with the learned Σ where the model has one). Also the DDIM inversion image → x_T (§3.3).
- `UpsamplerChain`: unguided super-resolution conditioned on the low-res image (bicubic-upsampled
  inside the model), optionally noise-augmented to a training level.

New embeddings, captions, low-res images, x_T, keys, guidance scales, η and step counts (up to
the settings' `padded_steps`) reuse the one program.

    chain = DecoderChain(decoder, DiffusionSettings(sampler="ddpm", learned_variance=True))
    images = chain(params, image_embed, key, image_size=64, steps=250, guidance_scale=3.0)
"""

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from unclip_jax import flop_meter, sharding
from unclip_jax.diffusion import gaussian, guidance, samplers
from unclip_jax.diffusion.schedules import Schedule, make_schedule
from unclip_jax.models.unet import CAPTION_INPUTS, Decoder, Upsampler
from unclip_jax.sampling.settings import DiffusionSettings, check_eta, check_guidance_scale

Array = jax.Array
Params = Any
Steps = int | str | Sequence[int]

# Paper step counts (Appendix C): decoder, 64→256 upsampler, 256→1024 upsampler.
DECODER_STEPS = 250
UPSAMPLER256_STEPS = 27
UPSAMPLER1024_STEPS = 15


def run_sampler(
    settings: DiffusionSettings,
    denoise: samplers.DenoiseFn,
    schedule: Schedule,
    x_T: Array,
    key: Array,
    eta: Array,
    var_type: str,
) -> Array:
    """The stage's sampler over `schedule` from x_T: DDIM(η) or DDPM with `var_type`."""
    extra = {"eta": eta} if settings.sampler == "ddim" else {}
    return samplers.SAMPLERS[settings.sampler](
        denoise,
        schedule,
        x_T,
        key,
        mean_type=settings.prediction,
        var_type=var_type,
        clip=settings.clip,
        **extra,
    )


class DecoderChain:
    """The decoder's guided chain and its DDIM inversion.

    `cond` (leading axis B): `image_embed` [B, D], `drop_image`, `drop_caption` [B] bool and the
    caption inputs of the model's caption source (`caption_ids` or `caption_states` +
    `caption_embed`, with `caption_mask`), as `conditioning` builds it.
    """

    def __init__(self, model: Decoder, settings: DiffusionSettings, channels: int = 3):
        expected = settings.output_channels(channels)
        if model.unet.out_channels != expected:
            raise ValueError(
                f"var_type {settings.var_type!r} needs {expected} output channels for "
                f"{channels}-channel images; the decoder has {model.unet.out_channels}"
            )
        self.model = model
        self.settings = settings
        self.channels = channels
        self.caption_keys = CAPTION_INPUTS[model.caption_source]
        self._sample = flop_meter.jit(self._run_sample)
        self._sample_from_key = flop_meter.jit(self._run_sample_from_key, static_argnames="shape")
        self._invert = flop_meter.jit(self._run_invert)

    def apply(self, params: Params, x: Array, t: Array, cond: Mapping[str, Array]) -> Array:
        """One call of the decoder on x [B, S, S, C] at timesteps t [B] with `conditioning`."""
        caption = {k: cond[k] for k in (*self.caption_keys, "caption_mask") if k in cond}
        return self.model.apply(
            {"params": params},
            x,
            t,
            cond["image_embed"],
            drop_image=cond["drop_image"],
            drop_caption=cond["drop_caption"] if self.caption_keys else None,
            **caption,
        )

    def _run_sample(self, params, x_T, cond, schedule, scale, eta, key):
        null = {
            **cond,
            "drop_image": jnp.ones_like(cond["drop_image"]),
            "drop_caption": jnp.ones_like(cond["drop_caption"]),
        }
        denoise = guidance.classifier_free_guidance(
            lambda x, t, c: self.apply(params, *sharding.spread_rows((x, t, c))),
            cond,
            null,
            scale,
            mean_channels=self.channels,
        )
        return run_sampler(self.settings, denoise, schedule, x_T, key, eta, self.settings.var_type)

    def _run_sample_from_key(self, params, cond, schedule, scale, eta, key, *, shape):
        noise_key, chain_key = jax.random.split(key)
        x_T = jax.random.normal(noise_key, shape, jnp.float32)
        return self._run_sample(params, x_T, cond, schedule, scale, eta, chain_key)

    def _run_invert(self, params, x0, cond, schedule):
        return samplers.ddim_invert(
            lambda x, t: self.apply(params, x, t, cond),
            schedule,
            x0,
            mean_type=self.settings.prediction,
            var_type=self.settings.var_type,
        )

    def conditioning(
        self,
        image_embed: Array,  # [B, D]
        caption: Mapping[str, Array] | None = None,  # the model's caption inputs, leading axis B
        drop_caption: Array | None = None,  # [B] bool; default: no caption dropped
        drop_image: Array | None = None,  # [B] bool: the learned null z_i; default: none
    ) -> dict[str, Array]:
        """The conditional inputs; the caption keys must be those of the caption source."""
        given = sorted(k for k in (caption or {}) if k != "caption_mask")
        if given != sorted(self.caption_keys):
            raise ValueError(
                f"caption_source {self.model.caption_source!r} takes caption inputs "
                f"{sorted(self.caption_keys) or 'none'}, got {given or 'none'}"
            )
        batch = image_embed.shape[0]
        if drop_caption is None:
            drop_caption = jnp.zeros((batch,), bool)
        if drop_image is None:
            drop_image = jnp.zeros((batch,), bool)
        return {
            "image_embed": jnp.asarray(image_embed, jnp.float32),
            "drop_image": jnp.asarray(drop_image, bool),
            "drop_caption": jnp.asarray(drop_caption, bool),
            **{k: jnp.asarray(v) for k, v in (caption or {}).items()},
        }

    def sample(
        self,
        params: Params,
        x_T: Array,  # [B, S, S, C]
        cond: Mapping[str, Array],
        steps: Steps,
        guidance_scale: float,
        eta: float,
        key: Array,
    ) -> Array:  # [B, S, S, C] in [-1, 1]
        schedule = self.settings.schedule_for(steps)
        scale = check_guidance_scale(guidance_scale)
        eta = check_eta(eta)
        return self._sample(
            params, x_T, dict(cond), schedule, jnp.float32(scale), jnp.float32(eta), key
        )

    def __call__(
        self,
        params: Params,
        image_embed: Array,  # [B, D_img]
        key: Array,
        *,
        image_size: int,
        caption: Mapping[str, Array] | None = None,
        steps: Steps = DECODER_STEPS,
        guidance_scale: float = 1.0,
        eta: float = 0.0,
    ) -> Array:  # [B, image_size, image_size, C]
        """Samples from x_T drawn from `key` (its first half) in the same program."""
        cond = self.conditioning(image_embed, caption)
        schedule = self.settings.schedule_for(steps)
        scale, eta = check_guidance_scale(guidance_scale), check_eta(eta)
        shape = (image_embed.shape[0], int(image_size), int(image_size), self.channels)
        return self._sample_from_key(
            params, cond, schedule, jnp.float32(scale), jnp.float32(eta), key, shape=shape
        )

    def invert(self, params: Params, x0: Array, cond: Mapping[str, Array], steps: Steps) -> Array:
        """DDIM inversion (unguided, conditional): images [B, S, S, C] → x_T."""
        return self._invert(params, x0, dict(cond), self.settings.schedule_for(steps))

    def compiled_programs(self) -> int:
        return sum(f._cache_size() for f in (self._sample, self._sample_from_key, self._invert))


class UpsamplerChain:
    """The super-resolution chain: unguided, conditioned on the low-res image [B, h, w, C].

    `noise_level` (a training timestep, for upsamplers trained with noise augmentation) noises
    the low-res image to that level of the training schedule and tells the model so; level 0
    leaves it clean.
    """

    def __init__(self, model: Upsampler, settings: DiffusionSettings, channels: int = 3):
        if model.unet.out_channels not in (channels, 2 * channels):
            raise ValueError(
                f"upsampler output channels must be {channels} or {2 * channels}, got "
                f"{model.unet.out_channels}"
            )
        self.model = model
        self.settings = settings
        self.channels = channels
        self._train_schedule = make_schedule(settings.schedule, settings.train_steps)
        self._sample = flop_meter.jit(self._run_sample)
        self._sample_from_key = flop_meter.jit(self._run_sample_from_key, static_argnames="size")

    def _run_sample(self, params, x_T, low_res, schedule, eta, key, noise_level):
        level = None
        if self.model.noise_level_conditioning:
            aug_key, key = jax.random.split(key)
            level = jnp.full(low_res.shape[:1], noise_level, jnp.int32)
            aug_noise = jax.random.normal(aug_key, low_res.shape, jnp.float32)
            noised = gaussian.q_sample(self._train_schedule, low_res, level, aug_noise)
            low_res = jnp.where(noise_level > 0, noised, low_res)  # level 0: the clean image

        def denoise(x, t):
            return self.model.apply({"params": params}, x, low_res, t, level)[..., : self.channels]

        return run_sampler(self.settings, denoise, schedule, x_T, key, eta, "fixed_small")

    def _run_sample_from_key(self, params, low_res, schedule, eta, key, noise_level, *, size):
        noise_key, chain_key = jax.random.split(key)
        shape = (low_res.shape[0], size, size, self.channels)
        x_T = jax.random.normal(noise_key, shape, jnp.float32)
        return self._run_sample(params, x_T, low_res, schedule, eta, chain_key, noise_level)

    def _level(self, noise_level: int | None) -> Array:
        if (noise_level is None) == self.model.noise_level_conditioning:
            raise ValueError(
                "noise_level must be given exactly when the upsampler is conditioned on it "
                f"(noise_level_conditioning={self.model.noise_level_conditioning})"
            )
        level = 0 if noise_level is None else int(noise_level)
        if not 0 <= level < self.settings.train_steps:
            raise ValueError(
                f"noise_level must be in [0, {self.settings.train_steps}), got {level}"
            )
        return jnp.int32(level)

    def sample(
        self,
        params: Params,
        x_T: Array,  # [B, H, W, C]
        low_res: Array,  # [B, h, w, C] in [-1, 1]
        steps: Steps,
        eta: float,
        key: Array,
        noise_level: int | None = None,
    ) -> Array:  # [B, H, W, C] in [-1, 1]
        schedule = self.settings.schedule_for(steps)
        level = self._level(noise_level)
        return self._sample(
            params, x_T, jnp.asarray(low_res, jnp.float32), schedule, jnp.float32(check_eta(eta)),
            key, level,
        )  # fmt: skip

    def __call__(
        self,
        params: Params,
        low_res: Array,  # [B, h, w, C] in [-1, 1]
        key: Array,
        *,
        size: int,
        steps: Steps = UPSAMPLER256_STEPS,
        eta: float = 0.0,
        noise_level: int | None = None,
    ) -> Array:  # [B, size, size, C]
        """Samples from x_T drawn from `key` (its first half) in the same program."""
        if low_res.ndim != 4 or low_res.shape[1] > size or low_res.shape[2] > size:
            raise ValueError(
                f"low_res must be [B, h, w, C] with h, w <= {size}, got {low_res.shape}"
            )
        level = self._level(noise_level)
        schedule = self.settings.schedule_for(steps)
        eta = jnp.float32(check_eta(eta))
        low_res = jnp.asarray(low_res, jnp.float32)
        return self._sample_from_key(params, low_res, schedule, eta, key, level, size=int(size))

    def compiled_programs(self) -> int:
        return self._sample._cache_size() + self._sample_from_key._cache_size()
