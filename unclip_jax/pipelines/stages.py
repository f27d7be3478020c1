"""The four stages of an `UnCLIP` pipeline as compiled programs over fixed-size batches.

Each stage holds its parameters and the one sampling chain of `unclip_jax.sampling` that the
training previews and benchmarks also run; keys, conditioning values, guidance scales, η and step
counts (up to the schedule's padded length) are traced arguments, so new prompts, seeds and
settings reuse its program. Inputs may be sharded over a mesh's "data" axis (parameters
replicated): the programs are written batch-wise and XLA partitions them. Every stage follows
`pipelines.protocol` (Karlo's stages too).

- `TextImageEncoder` (CLIP): captions → (z_t, token states); images → z_i.
- `PriorStage`: (z_t, token states) → z_i, best of N candidates by z_i·z_t (§2.1).
- `DecoderStage`: z_i (+ caption) → 64×64-style images from a given x_T, classifier-free guided,
  and the DDIM inversion image → x_T used by text diffs (§3.3).
- `UpsamplerStage`: low-res image → high-res image, unguided.
"""

import contextlib
import os
from collections.abc import Callable, Iterator
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np

from unclip_jax import flop_meter
from unclip_jax.convert import hf_clip
from unclip_jax.diffusion.analytic import AnalyticTable
from unclip_jax.models.frozen_clip import FrozenCLIP
from unclip_jax.models.prior import DiffusionPrior, EmbeddingNormalizer
from unclip_jax.models.unet import decoder_from_config, upsampler_from_config
from unclip_jax.nn.precision import parse_dtypes
from unclip_jax.pipelines import store
from unclip_jax.sampling.decoder import DecoderChain, UpsamplerChain
from unclip_jax.sampling.prior import EncodedCaption, make_prior_sampler
from unclip_jax.sampling.settings import DiffusionSettings
from unclip_jax.storage.tokenizers import load_tokenizer

Array = jax.Array
Params = Any


def cache_size(fn) -> int:
    """How many programs a jitted function has compiled."""
    return fn._cache_size()


def check_params(stage: store.StageFiles, call: Callable[[Params], Any]) -> None:
    """Trace `call(params)`, one model call on example inputs (nothing is compiled): parameters
    that do not fit the model its stage.json describes are one error naming the stage."""
    try:
        jax.eval_shape(call, stage.params)
    except (flax.errors.FlaxError, TypeError, ValueError) as error:
        reason = str(error).strip().splitlines()[0]
        raise ValueError(
            f"{stage.directory}: the parameters do not fit the model of its {store.STAGE_FILE}: "
            f"{reason}"
        ) from None


def check_learned_null(stage: store.StageFiles, null_conditioning: str) -> None:
    """Guidance swaps in the prior's learned null caption: a prior that guides with the empty
    caption's encoding instead ("empty_caption") is one error naming the stage."""
    if null_conditioning != "learned":
        raise ValueError(
            f"{stage.directory}: the pipeline samples priors with learned null conditioning; "
            f"this one has {null_conditioning!r}"
        )


@contextlib.contextmanager
def reading(stage: store.StageFiles) -> Iterator[dict]:
    """Yields the stage's settings; a value of its stage.json that the model or the sampler
    refuses becomes one error naming the file."""
    try:
        yield stage.settings
    except (TypeError, ValueError, KeyError) as error:
        raise ValueError(f"{stage.directory / store.STAGE_FILE}: {error}") from None


class TextImageEncoder:
    """The conditioning CLIP and its tokenizer."""

    def __init__(self, directory: str | os.PathLike, dtype: str | None = None):
        """`dtype`: a name of `nn.precision`'s COMPUTE_DTYPES to compute in (None: float32)."""
        self.clip = hf_clip.load_frozen_clip(directory, dtype)
        self.config = self.clip.model.config
        self.tokenizer = load_tokenizer(directory / store.TOKENIZER_DIR)
        self._text = flop_meter.jit(FrozenCLIP.encode_text)
        self._image = flop_meter.jit(FrozenCLIP.encode_image)

    def example_caption(self) -> dict[str, Any]:
        """The shapes of one encoded caption (ids, mask, states, text_embed; batch 1), for
        checking the stages that read captions; nothing is computed."""
        ids, mask = self.tokenize([""])
        text_embed, states = jax.eval_shape(self._text, self.clip, ids, mask)
        return {"ids": ids, "mask": mask, "states": states, "text_embed": text_embed}

    @property
    def context_length(self) -> int:
        return self.tokenizer.context_length

    @property
    def params(self) -> Params:
        return self.clip.params

    @params.setter
    def params(self, params: Params) -> None:
        self.clip = self.clip.replace(params=params)

    def tokenize(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """texts → (ids [B, L] int32, mask [B, L] bool); over-long texts warn and are cut."""
        ids, mask = self.tokenizer(texts)
        return np.asarray(ids, np.int32), np.asarray(mask).astype(bool)

    def encode_text(self, ids: Array, mask: Array) -> tuple[Array, Array]:
        """ids, mask: [B, L] → (z_t [B, P], token states [B, L, Dt])."""
        return self._text(self.clip, ids, mask)

    def encode_image(self, images: Array) -> Array:
        """images: [B, H, W, 3] in [-1, 1] → z_i [B, P]."""
        return self._image(self.clip, images)

    def compiled_programs(self) -> int:
        return cache_size(self._text) + cache_size(self._image)


class PriorStage:
    """The diffusion prior: `sample(key, z_t, states, mask, steps, scales, candidates)`, DDPM
    steps with the stage's variance (variance "analytic": from its stage.json's Γ table)."""

    accepts_fed_noise = False  # fed x_T and per-step noise: Karlo's stages only
    default_guidance = 4.0
    default_candidates = 2

    def __init__(self, files: store.StageFiles):
        self.params = files.params
        with reading(files) as settings:
            self.model = _prior_model(settings["model"])
            self.diffusion = DiffusionSettings.from_dict(settings["diffusion"])
            self.normalizer = _normalizer(settings["normalizer"], self.model)
            self.analytic = _analytic_table(settings, self.diffusion)
        check_learned_null(files, self.model.null_conditioning)
        check_params(files, self._example_call)
        self._samplers: dict[int, Any] = {}

    def sample(
        self,
        key: Array,
        caption: EncodedCaption,
        steps: int,
        scales: Array,  # [B] guidance scale per caption (0: unconditional)
        candidates: int,
    ) -> Array:  # z_i [B, Dz]
        if candidates not in self._samplers:
            self._samplers[candidates] = make_prior_sampler(
                self.model,
                num_candidates=candidates,
                sampler="ddpm",
                var_type=self.diffusion.var_type,
            )
        per_row = jnp.repeat(jnp.asarray(scales, jnp.float32), candidates)[:, None]
        z_i, _ = self._samplers[candidates](
            self.params,
            key,
            caption,
            self.diffusion.schedule_for(int(steps), self.analytic),
            per_row,
            self.normalizer,
        )
        return z_i

    def _example_call(self, params: Params) -> Array:
        model = self.model
        tokens = (1, model.num_tokens)
        return model.apply(
            {"params": params},
            jnp.zeros((1, model.embed_dim)),
            jnp.zeros((1,), jnp.int32),
            jnp.zeros((1, model.text_embed_dim or model.embed_dim)),
            jnp.zeros((*tokens, model.token_dim or model.embed_dim)),
            jnp.ones(tokens, bool),
        )

    def compiled_programs(self) -> int:
        return sum(cache_size(s.compiled) for s in self._samplers.values())


class DecoderStage:
    """The decoder: guided sampling from a given x_T with the stage's sampler, and DDIM
    inversion of images."""

    accepts_fed_noise = False
    default_guidance = 4.0

    def __init__(self, files: store.StageFiles, caption: dict[str, Any]):
        """`caption`: `TextImageEncoder.example_caption()`, the shapes the decoder will read."""
        self.params = files.params
        with reading(files) as settings:
            self.model = decoder_from_config(settings["model"])
            self.image_size = int(settings["image_size"])
            self.shape = (self.image_size, self.image_size, 3)
            self.diffusion = DiffusionSettings.from_dict(settings["diffusion"])
            self.chain = DecoderChain(self.model, self.diffusion)
        check_params(files, lambda params: self._example_call(params, caption))

    def conditioning(
        self,
        image_embed: Array,  # [B, D]
        caption: dict[str, Array],  # ids/mask/states/text_embed, leading axis B
        drop_caption: Array,  # [B] bool
        drop_image: Array | None = None,  # [B] bool: the learned null image embedding
    ) -> dict[str, Array]:
        """The decoder's conditional inputs for its caption source."""
        source = self.model.caption_source
        inputs = {}
        if source == "transformer":
            inputs = {"caption_ids": caption["ids"], "caption_mask": caption["mask"]}
        elif source == "clip":
            inputs = {
                "caption_states": caption["states"],
                "caption_embed": caption["text_embed"],
                "caption_mask": caption["mask"],
            }
        return self.chain.conditioning(image_embed, inputs, drop_caption, drop_image)

    def sample(
        self, x_T: Array, cond: dict, steps: int, scale: float, eta: float, key: Array
    ) -> Array:  # [B, S, S, 3] in [-1, 1]
        return self.chain.sample(self.params, x_T, cond, int(steps), scale, eta, key)

    def invert(self, x0: Array, cond: dict, steps: int) -> Array:  # [B, S, S, 3] -> x_T
        return self.chain.invert(self.params, x0, cond, int(steps))

    def _example_call(self, params: Params, caption: dict[str, Any]) -> Array:
        caption = {k: jnp.zeros(v.shape, v.dtype) for k, v in caption.items()}
        image_embed = jnp.zeros(caption["text_embed"].shape)
        cond = self.conditioning(image_embed, caption, jnp.zeros((1,), bool))
        x = jnp.zeros((1, *self.shape))
        return self.chain.apply(params, x, jnp.zeros((1,), jnp.int32), cond)

    def compiled_programs(self) -> int:
        return self.chain.compiled_programs()


class UpsamplerStage:
    """One super-resolution stage: unguided, conditioned on the clean low-res image."""

    accepts_fed_noise = False

    def __init__(self, files: store.StageFiles):
        self.params = files.params
        with reading(files) as settings:
            self.model = upsampler_from_config(settings["model"])
            self.low_res = int(settings["low_res"])
            self.high_res = int(settings["high_res"])
            self.shape = (self.high_res, self.high_res, 3)
            self.diffusion = DiffusionSettings.from_dict(settings["diffusion"])
            if self.diffusion.learned_variance:
                raise ValueError("upsamplers are sampled with fixed variance")
            self.chain = UpsamplerChain(self.model, self.diffusion)
        self.noise_level = 0 if self.model.noise_level_conditioning else None
        check_params(files, self._example_call)

    def _example_call(self, params: Params) -> Array:
        level = jnp.zeros((1,), jnp.int32) if self.model.noise_level_conditioning else None
        x, low = jnp.zeros((1, *self.shape)), jnp.zeros((1, self.low_res, self.low_res, 3))
        return self.model.apply({"params": params}, x, low, jnp.zeros((1,), jnp.int32), level)

    def sample(self, x_T: Array, low_res: Array, steps: int, eta: float, key: Array) -> Array:
        """x_T: [B, H, W, 3], low_res: [B, h, w, 3] in [-1, 1] → [B, H, W, 3]."""
        return self.chain.sample(
            self.params, x_T, low_res, int(steps), eta, key, noise_level=self.noise_level
        )

    def compiled_programs(self) -> int:
        return self.chain.compiled_programs()


def _prior_model(fields: dict) -> DiffusionPrior:
    return DiffusionPrior(**parse_dtypes({"dtype": "float32", "param_dtype": "float32", **fields}))


def _analytic_table(settings: dict, diffusion: DiffusionSettings) -> AnalyticTable | None:
    """The prior's Γ table ("analytic"), required when it samples with variance "analytic"."""
    if "analytic" not in settings:
        if diffusion.var_type == "analytic":
            raise ValueError("variance 'analytic' needs the prior's Γ table ('analytic'), absent")
        return None
    table = AnalyticTable.from_dict(settings["analytic"])
    if table.train_steps != diffusion.train_steps:
        raise ValueError(
            f"'analytic' holds Γ for {table.train_steps} timesteps; 'diffusion' has "
            f"train_steps={diffusion.train_steps}"
        )
    return table


def _normalizer(settings: dict, model: DiffusionPrior) -> EmbeddingNormalizer:
    mean, std = settings.get("mean"), settings.get("std")
    return EmbeddingNormalizer.create(
        settings["kind"],
        model.embed_dim,
        None if mean is None else np.asarray(mean),
        None if std is None else np.asarray(std),
    )
