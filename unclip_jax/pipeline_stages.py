"""The four stages of an `UnCLIP` pipeline as compiled programs over fixed-size batches.

Each stage jits ONE program per batch shape; keys, conditioning values, guidance scales, η and
step counts (up to the schedule's padded length) are traced arguments, so new prompts, seeds and
settings reuse it. Inputs may be sharded over a mesh's "data" axis (parameters replicated): the
programs are written batch-wise and XLA partitions them.

- `TextImageEncoder` (CLIP): captions → (z_t, token states); images → z_i.
- `PriorStage`: (z_t, token states) → z_i, best of N candidates by z_i·z_t (§2.1).
- `DecoderStage`: z_i (+ caption) → 64×64-style images from a given x_T, classifier-free guided,
  and the DDIM inversion image → x_T used by text diffs (§3.3).
- `UpsamplerStage`: low-res image → high-res image, unguided.
"""

from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from unclip_jax import pipeline_store as store
from unclip_jax.convert import hf_clip
from unclip_jax.diffusion import guidance, samplers
from unclip_jax.diffusion.schedules import Schedule, make_schedule
from unclip_jax.models.clip import CLIP, normalize
from unclip_jax.models.clip_preprocessing import clip_preprocess
from unclip_jax.models.prior import DiffusionPrior, EmbeddingNormalizer
from unclip_jax.models.prior_sampling import make_prior_sampler
from unclip_jax.models.unet import CAPTION_INPUTS, decoder_from_config, upsampler_from_config
from unclip_jax.text import tokenizer as tokenizer_lib

Array = jax.Array
Params = Any


def cache_size(fn) -> int:
    """How many programs a jitted function has compiled."""
    return fn._cache_size()


def schedule_for(settings: store.DiffusionSettings, steps: int) -> Schedule:
    """The stage's schedule respaced to `steps`, padded to all training steps (one program)."""
    if not 1 <= steps <= settings.train_steps:
        raise ValueError(f"steps must be in [1, {settings.train_steps}], got {steps}")
    return make_schedule(
        settings.schedule, settings.train_steps, int(steps), max_steps=settings.train_steps
    )


class TextImageEncoder:
    """The conditioning CLIP and its tokenizer."""

    has_image_encoder = True

    def __init__(self, directory: Path):
        config, variables = hf_clip.load_clip(directory)
        self.config = config
        self.model = CLIP(config)
        self.params = jax.device_get(variables["params"])
        self.tokenizer = tokenizer_lib.load_tokenizer(directory / store.TOKENIZER_DIR)
        self._text = jax.jit(self._encode_text)
        self._image = jax.jit(self._encode_image)

    @property
    def context_length(self) -> int:
        return self.tokenizer.context_length

    def _encode_text(self, params, ids, mask):
        z, aux = self.model.apply({"params": params}, ids, mask, method=CLIP.encode_text)
        return z.astype(jnp.float32), aux["hidden_states"].astype(jnp.float32)

    def _encode_image(self, params, images):
        pixels = clip_preprocess(images, self.config.vision.image_size)
        z, _ = self.model.apply({"params": params}, pixels, method=CLIP.encode_image)
        return z.astype(jnp.float32)

    def tokenize(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """texts → (ids [B, L] int32, mask [B, L] bool); over-long texts warn and are cut."""
        ids, mask = self.tokenizer(texts)
        return np.asarray(ids, np.int32), np.asarray(mask).astype(bool)

    def encode_text(self, ids: Array, mask: Array) -> tuple[Array, Array]:
        """ids, mask: [B, L] → (z_t [B, P], token states [B, L, Dt])."""
        return self._text(self.params, ids, mask)

    def encode_image(self, images: Array) -> Array:
        """images: [B, H, W, 3] in [-1, 1] → z_i [B, P]."""
        return self._image(self.params, images)

    def compiled_programs(self) -> int:
        return cache_size(self._text) + cache_size(self._image)


class PriorStage:
    """The diffusion prior: `sample(key, z_t, states, mask, steps, scales, candidates)`."""

    accepts_fed_noise = False  # fed x_T and per-step noise: Karlo's stages only
    default_guidance = 4.0
    default_candidates = 2

    def __init__(self, directory: Path):
        settings, self.params = store.read_stage(directory)
        fields = dict(settings["model"])
        for name in ("dtype", "param_dtype"):
            fields[name] = jnp.dtype(fields.get(name, "float32"))
        self.model = DiffusionPrior(**fields)
        self.diffusion = store.DiffusionSettings.from_dict(settings["diffusion"])
        norm = settings["normalizer"]
        mean, std = norm.get("mean"), norm.get("std")
        self.normalizer = EmbeddingNormalizer.create(
            norm["kind"],
            self.model.embed_dim,
            None if mean is None else np.asarray(mean),
            None if std is None else np.asarray(std),
        )
        if self.model.null_conditioning != "learned":
            raise ValueError(
                f"{directory}: the pipeline samples priors with learned null conditioning; "
                f"this one has {self.model.null_conditioning!r}"
            )
        self._samplers: dict[int, Any] = {}

    def sample(
        self,
        key: Array,
        text_embed: Array,  # [B, Dz]
        token_states: Array,  # [B, L, Dt]
        text_mask: Array,  # [B, L] bool
        steps: int,
        scales: Array,  # [B] guidance scale per caption (0: unconditional)
        candidates: int,
    ) -> Array:  # z_i [B, Dz]
        if candidates not in self._samplers:
            self._samplers[candidates] = make_prior_sampler(
                self.model, num_candidates=candidates, sampler="ddpm"
            )
        per_row = jnp.repeat(jnp.asarray(scales, jnp.float32), candidates)[:, None]
        z_i, _ = self._samplers[candidates](
            self.params,
            key,
            text_embed,
            token_states,
            text_mask,
            schedule_for(self.diffusion, steps),
            per_row,
            self.normalizer,
        )
        return z_i

    def compiled_programs(self) -> int:
        return sum(cache_size(s.compiled) for s in self._samplers.values())


class DecoderStage:
    """The decoder: guided DDIM from a given x_T, and DDIM inversion of images."""

    accepts_fed_noise = False
    default_guidance = 4.0

    def __init__(self, directory: Path):
        settings, self.params = store.read_stage(directory)
        self.model = decoder_from_config(settings["model"])
        self.image_size = int(settings["image_size"])
        self.diffusion = store.DiffusionSettings.from_dict(settings["diffusion"])
        self.caption_keys = CAPTION_INPUTS[self.model.caption_source]
        self._sample = jax.jit(self._run_sample)
        self._invert = jax.jit(self._run_invert)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.image_size, self.image_size, 3)

    def _apply(self, params, x, t, cond):
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
            lambda x, t, c: self._apply(params, x, t, c), cond, null, scale, mean_channels=3
        )
        return samplers.ddim_sample(
            denoise,
            schedule,
            x_T,
            key,
            eta=eta,
            mean_type=self.diffusion.prediction,
            var_type=self.diffusion.var_type,
            clip="static",
        )

    def _run_invert(self, params, x0, cond, schedule):
        return samplers.ddim_invert(
            lambda x, t: self._apply(params, x, t, cond),
            schedule,
            x0,
            mean_type=self.diffusion.prediction,
            var_type=self.diffusion.var_type,
        )

    def conditioning(
        self,
        image_embed: Array,  # [B, D]
        caption: dict[str, Array],  # ids/mask/states/text_embed, leading axis B
        drop_caption: Array,  # [B] bool
    ) -> dict[str, Array]:
        """The decoder's conditional inputs for its caption source."""
        cond = {
            "image_embed": image_embed,
            "drop_image": jnp.zeros(image_embed.shape[:1], bool),
            "drop_caption": jnp.asarray(drop_caption, bool),
        }
        source = self.model.caption_source
        if source == "transformer":
            cond.update(caption_ids=caption["ids"], caption_mask=caption["mask"])
        elif source == "clip":
            cond.update(
                caption_states=caption["states"],
                caption_embed=caption["text_embed"],
                caption_mask=caption["mask"],
            )
        return cond

    def sample(
        self, x_T: Array, cond: dict, steps: int, scale: float, eta: float, key: Array
    ) -> Array:  # [B, S, S, 3] in [-1, 1]
        schedule = schedule_for(self.diffusion, steps)
        return self._sample(
            self.params, x_T, cond, schedule, jnp.float32(scale), jnp.float32(eta), key
        )

    def invert(self, x0: Array, cond: dict, steps: int) -> Array:  # [B, S, S, 3] -> x_T
        return self._invert(self.params, x0, cond, schedule_for(self.diffusion, steps))

    def compiled_programs(self) -> int:
        return cache_size(self._sample) + cache_size(self._invert)


class UpsamplerStage:
    """One super-resolution stage: unguided DDIM conditioned on the low-res image."""

    accepts_fed_noise = False

    def __init__(self, directory: Path):
        settings, self.params = store.read_stage(directory)
        self.model = upsampler_from_config(settings["model"])
        self.low_res = int(settings["low_res"])
        self.high_res = int(settings["high_res"])
        self.diffusion = store.DiffusionSettings.from_dict(settings["diffusion"])
        if self.diffusion.learned_variance:
            raise ValueError(f"{directory}: upsamplers are sampled with fixed variance")
        self._sample = jax.jit(self._run_sample)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.high_res, self.high_res, 3)

    def _run_sample(self, params, x_T, low_res, schedule, eta, key):
        level = None
        if self.model.noise_level_conditioning:
            level = jnp.zeros(low_res.shape[:1], jnp.int32)

        def denoise(x, t):
            return self.model.apply({"params": params}, x, low_res, t, level)[..., :3]

        return samplers.ddim_sample(
            denoise,
            schedule,
            x_T,
            key,
            eta=eta,
            mean_type=self.diffusion.prediction,
            clip="static",
        )

    def sample(self, x_T: Array, low_res: Array, steps: int, eta: float, key: Array) -> Array:
        """x_T: [B, H, W, 3], low_res: [B, h, w, 3] in [-1, 1] → [B, H, W, 3]."""
        schedule = schedule_for(self.diffusion, steps)
        return self._sample(self.params, x_T, low_res, schedule, jnp.float32(eta), key)

    def compiled_programs(self) -> int:
        return cache_size(self._sample)


def clip_scores(image_embed: Array, text_embed: Array) -> Array:
    """Cosine similarity of matching rows: [B, D], [B, D] → [B]."""
    return jnp.sum(normalize(image_embed) * normalize(text_embed), axis=-1)
