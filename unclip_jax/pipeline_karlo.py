"""The stages of an `UnCLIP` pipeline over a converted Karlo checkpoint (`convert-karlo`).

Same interface as `pipeline_stages` (so `UnCLIP` drives them alike), with Karlo's sampling rule
(diffusers' `UnCLIPPipeline`): ancestral steps of each stage's `KarloScheduler` (its variance type
and clipping as the checkpoint's scheduler configs set them), guidance against the empty caption's
CLIP encoding, the decoder's output clamped to [-1, 1] before super-resolution, and
`super_res_first` at every super-resolution step but the last (t = 0), where `super_res_last`
runs. Each stage is one compiled program per batch shape; step counts, scales and keys are traced.

Karlo has a CLIP text encoder only: `KarloTextEncoder.has_image_encoder` is False, and `UnCLIP`
refuses the operations that need image embeddings of images.

Per-step noise is drawn from the key `UnCLIP` passes (its chunk's); every `sample` also takes fed
`noise` [B, steps − 1, …] (the noise added after each step, in sampling order; the last step adds
none), and the prior fed `latents` [B, D] (its x_T), to reproduce another implementation's chain.
"""

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from unclip_jax.convert.diffusers_unclip import KarloCheckpoint, load_karlo
from unclip_jax.diffusion import guidance, samplers
from unclip_jax.diffusion.karlo import KarloScheduler
from unclip_jax.diffusion.schedules import Schedule
from unclip_jax.models.prior_sampling import rerank_by_dot_product
from unclip_jax.pipeline_stages import cache_size
from unclip_jax.text import tokenizer as tokenizer_lib

Array = jax.Array
NO_IMAGE_ENCODER = "a Karlo checkpoint has no CLIP image encoder"


@dataclasses.dataclass(frozen=True)
class KarloSampling:
    """A Karlo stage's step counts as `UnCLIP` reads them (`DiffusionSettings`' names)."""

    sample_steps: int  # Karlo's default step count
    train_steps: int  # T; step counts go up to it
    min_steps: int = 2  # Karlo's timesteps round(k·(T−1)/(N−1)) need N ≥ 2
    eta: float = 1.0  # ancestral steps (reported; Karlo's chains take no η)


def _schedule(scheduler: KarloScheduler, steps: int) -> Schedule:
    """Karlo's respaced schedule padded to T steps: one program for every step count."""
    return scheduler.schedule(int(steps), max_steps=scheduler.num_train_steps)


def _chain_noise(noise: Array) -> Array:
    """Fed noise [B, S−1, …] in sampling order → the samplers' [S, B, …] by schedule index."""
    steps_first = jnp.moveaxis(noise.astype(jnp.float32), 1, 0)[::-1]
    return jnp.concatenate([jnp.zeros_like(steps_first[:1]), steps_first])


def _ancestral(
    scheduler: KarloScheduler,
    denoise: samplers.DenoiseFn,
    schedule: Schedule,
    x_T: Array,
    key: Array,
    noise: Array | None,
) -> Array:
    """Karlo's chain: per-step noise fed ([B, S−1, …]) or drawn from `key`."""
    return samplers.ddpm_sample(
        scheduler.wrap(denoise),
        schedule,
        x_T,
        None if noise is not None else key,
        noise=None if noise is None else _chain_noise(noise),
        **scheduler.sampler_kwargs(),
    )


class KarloTextEncoder:
    """Karlo's CLIP text encoder and tokenizer: captions → (z_t, token states)."""

    has_image_encoder = False

    def __init__(self, checkpoint: KarloCheckpoint, directory: Path):
        if checkpoint.tokenizer_dir is None:
            raise FileNotFoundError(f"Karlo checkpoint {str(directory)!r} has no tokenizer/")
        self.model = checkpoint.text_encoder
        self.params = checkpoint.params["text_encoder"]
        self.tokenizer = tokenizer_lib.load_tokenizer(checkpoint.tokenizer_dir)
        self._text = jax.jit(self._encode_text)

    @property
    def context_length(self) -> int:
        return self.tokenizer.context_length

    def _encode_text(self, params, ids):
        z, aux = self.model.apply({"params": params}, ids)
        return z.astype(jnp.float32), aux["hidden_states"].astype(jnp.float32)

    def tokenize(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """texts → (ids [B, L] int32, mask [B, L] bool); over-long texts warn and are cut."""
        ids, mask = self.tokenizer(texts)
        return np.asarray(ids, np.int32), np.asarray(mask).astype(bool)

    def encode_text(self, ids: Array, mask: Array) -> tuple[Array, Array]:
        """ids, mask: [B, L] → (z_t [B, P], token states [B, L, Dt]); the mask is not needed
        (causal encoder, pooled at the end-of-text token)."""
        del mask
        return self._text(self.params, ids)

    def null_caption(self) -> dict[str, np.ndarray]:
        """The empty caption, Karlo's unconditional input: embed [1, P], states [1, L, Dt],
        mask [1, L] bool."""
        ids, mask = self.tokenize([""])
        embed, states = jax.jit(self._encode_text)(self.params, ids)  # not one of the programs
        return {
            "embed": np.asarray(embed, np.float32),
            "states": np.asarray(states, np.float32),
            "mask": mask,
        }

    def encode_image(self, images: Array) -> Array:
        raise ValueError(f"{NO_IMAGE_ENCODER}: images cannot be embedded")

    def compiled_programs(self) -> int:
        return cache_size(self._text)


def _with_null(cond: Array, null: Array) -> Array:
    """[B, …] conditional rows then the null row broadcast to B: [2B, …]."""
    return jnp.concatenate([cond, jnp.broadcast_to(null, cond.shape).astype(cond.dtype)])


class KarloPriorStage:
    """Karlo's prior: guided against the empty caption, samples de-normalised (clip_mean/std);
    with several candidates the largest z_i·z_t is kept."""

    accepts_fed_noise = True
    default_candidates = 1  # Karlo keeps its one sample

    def __init__(self, checkpoint: KarloCheckpoint, null_caption: dict[str, np.ndarray]):
        self.model = checkpoint.prior
        self.scheduler = checkpoint.schedulers["prior"]
        self.normalizer = checkpoint.normalizer
        self.params = {"model": checkpoint.params["prior"], "null": null_caption}
        sampling = checkpoint.sampling["prior"]
        self.diffusion = KarloSampling(int(sampling["steps"]), self.scheduler.num_train_steps)
        self.default_guidance = float(sampling["guidance_scale"])
        self._sample = jax.jit(self._run_sample, static_argnames="candidates")

    def _run_sample(
        self, params, key, text_embed, states, mask, schedule, scales, latents, noise, candidates
    ):
        embed, states, mask, scales = (
            jnp.repeat(a, candidates, axis=0) for a in (text_embed, states, mask, scales)
        )
        null = params["null"]
        both = {
            "embed": _with_null(embed, null["embed"]),
            "states": _with_null(states, null["states"]),
            "mask": _with_null(mask, null["mask"]),
        }

        def denoise(x, t):  # [BN, D], [BN] -> guided x0 [BN, D]
            output = self.model.apply(
                {"params": params["model"]},
                jnp.concatenate([x, x]),
                jnp.concatenate([t, t]),
                both["embed"],
                both["states"],
                both["mask"],
            )
            conditional, unconditional = jnp.split(output, 2)
            return guidance.guide(conditional, unconditional, scales[:, None], x.shape[-1])

        if latents is None:
            latents = jax.random.normal(jax.random.fold_in(key, 0), embed.shape, jnp.float32)
        x0 = _ancestral(
            self.scheduler, denoise, schedule, latents, jax.random.fold_in(key, 1), noise
        )
        z_i = self.normalizer.denormalize(x0).reshape(len(text_embed), candidates, -1)
        return rerank_by_dot_product(z_i, text_embed)[0]

    def sample(
        self,
        key: Array,
        text_embed: Array,  # [B, Dz]
        token_states: Array,  # [B, L, Dt]
        text_mask: Array,  # [B, L] bool
        steps: int,
        scales: Array,  # [B] guidance scale per caption (0: the empty caption's output)
        candidates: int,
        *,
        latents: Array | None = None,  # [B, Dz] x_T in the normalised space (candidates = 1)
        noise: Array | None = None,  # [B, steps − 1, Dz]
    ) -> Array:  # z_i [B, Dz]
        return self._sample(
            self.params,
            key,
            text_embed,
            token_states,
            text_mask,
            _schedule(self.scheduler, steps),
            jnp.asarray(scales, jnp.float32),
            latents,
            noise,
            candidates=candidates,
        )

    def compiled_programs(self) -> int:
        return cache_size(self._sample)


class KarloDecoderStage:
    """Karlo's decoder (text_proj + U-Net): guided ancestral steps from a given x_T."""

    accepts_fed_noise = True

    def __init__(self, checkpoint: KarloCheckpoint, null_caption: dict[str, np.ndarray]):
        self.model = checkpoint.decoder
        self.scheduler = checkpoint.schedulers["decoder"]
        self.image_size = int(checkpoint.decoder_size)
        self.params = {"model": checkpoint.params["decoder"], "null": null_caption}
        sampling = checkpoint.sampling["decoder"]
        self.diffusion = KarloSampling(int(sampling["steps"]), self.scheduler.num_train_steps)
        self.default_guidance = float(sampling["guidance_scale"])
        self._sample = jax.jit(self._run_sample)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.image_size, self.image_size, 3)

    def conditioning(
        self,
        image_embed: Array,  # [B, D]
        caption: dict[str, Array],  # mask/states/text_embed, leading axis B
        drop_caption: Array,  # [B] bool, unused: an empty prompt's encoding is the null caption
    ) -> dict[str, Array]:
        del drop_caption
        return {
            "image_embed": image_embed,
            "caption_states": caption["states"],
            "caption_embed": caption["text_embed"],
            "caption_mask": caption["mask"],
        }

    def _run_sample(self, params, x_T, cond, schedule, scale, key, noise):
        null = params["null"]
        batch = len(x_T)
        image_embed = cond["image_embed"]
        states = _with_null(cond["caption_states"], null["states"])
        embed = _with_null(cond["caption_embed"], null["embed"])
        mask = _with_null(cond["caption_mask"], null["mask"])
        drop_image = jnp.arange(2 * batch) >= batch  # the learned null image embedding

        def denoise(x, t):
            output = self.model.apply(
                {"params": params["model"]},
                jnp.concatenate([x, x]),
                jnp.concatenate([t, t]),
                jnp.concatenate([image_embed, image_embed]),
                caption_states=states,
                caption_embed=embed,
                caption_mask=mask,
                drop_image=drop_image,
            )
            conditional, unconditional = jnp.split(output, 2)
            return guidance.guide(conditional, unconditional, scale, x.shape[-1])

        images = _ancestral(self.scheduler, denoise, schedule, x_T, key, noise)
        return jnp.clip(images, -1.0, 1.0)

    def sample(
        self,
        x_T: Array,  # [B, S, S, 3]
        cond: dict,
        steps: int,
        scale: float,
        eta: float,  # unused: Karlo's steps are ancestral
        key: Array,
        *,
        noise: Array | None = None,  # [B, steps − 1, S, S, 3]
    ) -> Array:  # [B, S, S, 3] in [-1, 1]
        del eta
        schedule = _schedule(self.scheduler, steps)
        return self._sample(self.params, x_T, cond, schedule, jnp.float32(scale), key, noise)

    def invert(self, x0: Array, cond: dict, steps: int) -> Array:
        raise ValueError(f"{NO_IMAGE_ENCODER}: text diffs are not available")

    def compiled_programs(self) -> int:
        return cache_size(self._sample)


class KarloSuperResStage:
    """Karlo's super-resolution: `super_res_first` for every step but the last, `super_res_last`
    at t = 0, in one program; unguided."""

    accepts_fed_noise = True

    def __init__(self, checkpoint: KarloCheckpoint):
        self.model = checkpoint.super_res
        self.scheduler = checkpoint.schedulers["super_res"]
        self.low_res = int(checkpoint.decoder_size)
        self.high_res = int(checkpoint.super_res_size)
        self.params = {
            "first": checkpoint.params["super_res_first"],
            "last": checkpoint.params["super_res_last"],
        }
        steps = int(checkpoint.sampling["super_res"]["steps"])
        self.diffusion = KarloSampling(steps, self.scheduler.num_train_steps)
        self._sample = jax.jit(self._run_sample)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.high_res, self.high_res, 3)

    def _run_sample(self, params, x_T, low_res, schedule, key, noise):
        def denoise(x, t):
            def run(name):
                return lambda: self.model.apply({"params": params[name]}, x, low_res, t)

            return jax.lax.cond(t[0] == 0, run("last"), run("first"))

        images = _ancestral(self.scheduler, denoise, schedule, x_T, key, noise)
        return jnp.clip(images, -1.0, 1.0)

    def sample(
        self,
        x_T: Array,  # [B, H, W, 3]
        low_res: Array,  # [B, h, w, 3] in [-1, 1]
        steps: int,
        eta: float,  # unused: Karlo's steps are ancestral
        key: Array,
        *,
        noise: Array | None = None,  # [B, steps − 1, H, W, 3]
    ) -> Array:  # [B, H, W, 3] in [-1, 1]
        del eta
        schedule = _schedule(self.scheduler, steps)
        return self._sample(self.params, x_T, low_res, schedule, key, noise)

    def compiled_programs(self) -> int:
        return cache_size(self._sample)


def is_karlo_checkpoint(directory: str | Path) -> bool:
    from unclip_jax.convert.diffusers_unclip import CONFIG_FILE

    return (Path(directory) / CONFIG_FILE).is_file()


def load_karlo_stages(
    directory: str | Path,
) -> tuple[KarloTextEncoder, KarloPriorStage, KarloDecoderStage, list[KarloSuperResStage]]:
    """(text encoder, prior, decoder, [super-res]) of a `save_karlo` directory."""
    checkpoint = load_karlo(directory)
    text = KarloTextEncoder(checkpoint, Path(directory))
    null = text.null_caption()
    return (
        text,
        KarloPriorStage(checkpoint, null),
        KarloDecoderStage(checkpoint, null),
        [KarloSuperResStage(checkpoint)],
    )
