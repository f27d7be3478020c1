"""The stages of an `UnCLIP` pipeline over a converted Karlo checkpoint (`convert-karlo`).

Same interface as `pipelines.stages` (so `UnCLIP` drives them alike), with Karlo's sampling rule
(diffusers' `UnCLIPPipeline`): ancestral steps of each stage's `KarloScheduler` (its variance type
and clipping as the checkpoint's scheduler configs set them), guidance against the empty caption's
CLIP encoding, the decoder's output clamped to [-1, 1] before super-resolution, and
`super_res_first` at every super-resolution step but the last (t = 0), where `super_res_last`
runs. Each stage is one compiled program per batch shape; step counts, scales and keys are traced.

Karlo has a CLIP text encoder only: `KarloTextEncoder` is not a `protocol.ImageEncoder` and
`KarloDecoderStage` not a `protocol.InvertibleDecoder`, so `UnCLIP` refuses the operations that
need image embeddings of images.

Per-step noise is drawn from the key `UnCLIP` passes (its chunk's); every `sample` also takes fed
`noise` [B, steps − 1, …] (the noise added after each step, in sampling order; the last step adds
none), and the prior fed `latents` [B, D] (its x_T), to reproduce another implementation's chain.
"""

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

from unclip_jax import flop_meter
from unclip_jax.convert.karlo_checkpoint import KarloCheckpoint, load_karlo
from unclip_jax.nn.precision import cast_floats, compute_dtype
from unclip_jax.pipelines.stages import cache_size
from unclip_jax.sampling.karlo import (
    KarloDecoderChain,
    KarloPriorChain,
    KarloSuperResChain,
    karlo_chains,
    karlo_schedule,
)
from unclip_jax.sampling.prior import EncodedCaption
from unclip_jax.storage.tokenizers import load_tokenizer

Array = jax.Array
# The empty caption's encoding, Karlo's unconditional input: embed [1, P], states [1, L, Dt],
# mask [1, L] bool.
NullInputs = dict[str, np.ndarray]


def ancestral_schedule(scheduler, steps: int, eta: float):
    """The schedule of `steps` of Karlo's sampler, which takes η = 1 only (its steps are the
    scheduler's ancestral ones)."""
    if eta != 1.0:
        raise ValueError(f"eta must be 1 for a Karlo checkpoint (ancestral steps), got {eta}")
    return karlo_schedule(scheduler, steps)


@dataclasses.dataclass(frozen=True)
class KarloSampling:
    """A Karlo stage's step counts as `UnCLIP` reads them (`DiffusionSettings`' names)."""

    sample_steps: int  # Karlo's default step count
    train_steps: int  # T; step counts go up to it
    min_steps: int = 2  # Karlo's timesteps round(k·(T−1)/(N−1)) need N ≥ 2
    eta: float = 1.0  # ancestral steps: the only η Karlo's chains take

    @classmethod
    def of(cls, checkpoint: KarloCheckpoint, stage: str) -> "KarloSampling":
        """Stage `stage`'s (prior, decoder, super_res) default steps and T."""
        steps = int(checkpoint.sampling[stage]["steps"])
        return cls(steps, checkpoint.schedulers[stage].num_train_steps)


class KarloTextEncoder:
    """Karlo's CLIP text encoder and tokenizer: captions → (z_t, token states)."""

    def __init__(self, checkpoint: KarloCheckpoint, directory: epath.Path):
        if checkpoint.tokenizer_dir is None:
            raise FileNotFoundError(f"Karlo checkpoint {str(directory)!r} has no tokenizer/")
        self.model = checkpoint.text_encoder
        self.params = checkpoint.params["text_encoder"]
        self.tokenizer = load_tokenizer(checkpoint.tokenizer_dir)
        self._text = flop_meter.jit(self._encode_text)

    @property
    def context_length(self) -> int:
        return self.tokenizer.context_length

    def _encode_text(self, params, ids, mask):
        z, aux = self.model.apply({"params": params}, ids, mask)
        return z.astype(jnp.float32), aux["hidden_states"].astype(jnp.float32)

    def tokenize(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """texts → (ids [B, L] int32, mask [B, L] bool); over-long texts warn and are cut."""
        ids, mask = self.tokenizer(texts)
        return np.asarray(ids, np.int32), np.asarray(mask).astype(bool)

    def encode_text(self, ids: Array, mask: Array) -> tuple[Array, Array]:
        """ids, mask: [B, L] → (z_t [B, P], token states [B, L, Dt]); a causal encoder pooled at
        the end-of-text token, so the mask changes only the padding positions' states."""
        return self._text(self.params, ids, mask)

    def null_caption(self) -> NullInputs:
        """The empty caption, Karlo's unconditional input: embed [1, P], states [1, L, Dt],
        mask [1, L] bool."""
        ids, mask = self.tokenize([""])
        # A program of its own, not counted among the stage's.
        embed, states = flop_meter.jit(self._encode_text)(self.params, ids, mask)
        return {
            "embed": np.asarray(embed, np.float32),
            "states": np.asarray(states, np.float32),
            "mask": mask,
        }

    def compiled_programs(self) -> int:
        return cache_size(self._text)


class KarloPriorStage:
    """Karlo's prior: guided against the empty caption, samples de-normalised (clip_mean/std);
    with several candidates the largest z_i·z_t is kept."""

    accepts_fed_noise = True
    default_candidates = 1  # Karlo keeps its one sample

    def __init__(self, checkpoint: KarloCheckpoint, chain: KarloPriorChain, null: NullInputs):
        self.chain, self.model, self.scheduler = chain, chain.model, chain.scheduler
        self.params = {"model": checkpoint.params["prior"], "null": null}
        self.diffusion = KarloSampling.of(checkpoint, "prior")
        self.default_guidance = float(checkpoint.sampling["prior"]["guidance_scale"])

    def sample(
        self,
        key: Array,
        caption: EncodedCaption,
        steps: int,
        scales: Array,  # [B] guidance scale per caption (0: the empty caption's output)
        candidates: int,
        *,
        latents: Array | None = None,  # [B, Dz] x_T in the normalised space (candidates = 1)
        noise: Array | None = None,  # [B, steps − 1, Dz]
    ) -> Array:  # z_i [B, Dz]
        return self.chain(
            self.params,
            key,
            *caption,
            karlo_schedule(self.scheduler, steps),
            jnp.asarray(scales, jnp.float32),
            latents,
            noise,
            candidates=candidates,
        )

    def compiled_programs(self) -> int:
        return cache_size(self.chain.compiled)


class KarloDecoderStage:
    """Karlo's decoder (text_proj + U-Net): guided ancestral steps from a given x_T."""

    accepts_fed_noise = True

    def __init__(self, checkpoint: KarloCheckpoint, chain: KarloDecoderChain, null: NullInputs):
        self.chain, self.model, self.scheduler = chain, chain.model, chain.scheduler
        self.image_size = int(checkpoint.decoder_size)
        self.shape = (self.image_size, self.image_size, 3)
        self.params = {"model": checkpoint.params["decoder"], "null": null}
        self.diffusion = KarloSampling.of(checkpoint, "decoder")
        self.default_guidance = float(checkpoint.sampling["decoder"]["guidance_scale"])

    def conditioning(
        self,
        image_embed: Array,  # [B, D]
        caption: dict[str, Array],  # mask/states/text_embed, leading axis B
        drop_caption: Array,  # [B] bool: these rows see the empty caption's encoding
        drop_image: Array | None = None,  # [B] bool: these rows see the learned null z_i
    ) -> dict[str, Array]:
        null = self.params["null"]
        drop = jnp.asarray(drop_caption, bool)

        def pick(key: str, value: Array) -> Array:
            where = drop.reshape(-1, *([1] * (value.ndim - 1)))
            return jnp.where(where, jnp.asarray(null[key][0], value.dtype), value)

        cond = {
            "image_embed": image_embed,
            "caption_states": pick("states", caption["states"]),
            "caption_embed": pick("embed", caption["text_embed"]),
            "caption_mask": pick("mask", caption["mask"]),
        }
        if drop_image is not None:
            cond["drop_image"] = jnp.asarray(drop_image, bool)
        return cond

    def sample(
        self,
        x_T: Array,  # [B, S, S, 3]
        cond: dict,
        steps: int,
        scale: float,
        eta: float,  # Karlo's steps are ancestral: η = 1, its `diffusion.eta`
        key: Array,
        *,
        noise: Array | None = None,  # [B, steps − 1, S, S, 3]
    ) -> Array:  # [B, S, S, 3] in [-1, 1]
        schedule = ancestral_schedule(self.scheduler, steps, eta)
        return self.chain(self.params, x_T, cond, schedule, jnp.float32(scale), key, noise)

    def compiled_programs(self) -> int:
        return cache_size(self.chain.compiled)


class KarloSuperResStage:
    """Karlo's super-resolution: `super_res_first` for every step but the last, `super_res_last`
    at t = 0, in one program; unguided."""

    accepts_fed_noise = True

    def __init__(self, checkpoint: KarloCheckpoint, chain: KarloSuperResChain):
        self.chain, self.model, self.scheduler = chain, chain.model, chain.scheduler
        self.low_res = int(checkpoint.decoder_size)
        self.high_res = int(checkpoint.super_res_size)
        self.shape = (self.high_res, self.high_res, 3)
        self.params = {
            "first": checkpoint.params["super_res_first"],
            "last": checkpoint.params["super_res_last"],
        }
        self.diffusion = KarloSampling.of(checkpoint, "super_res")

    def sample(
        self, x_T: Array, low_res: Array, steps: int, eta: float, key: Array, *, noise=None
    ) -> Array:
        """x_T [B, H, W, 3], low_res [B, h, w, 3] in [-1, 1] → [B, H, W, 3] in [-1, 1]; η must
        be 1 (ancestral steps); `noise` [B, steps − 1, H, W, 3] is fed per-step noise."""
        schedule = ancestral_schedule(self.scheduler, steps, eta)
        return self.chain(self.params, x_T, low_res, schedule, key, noise)

    def compiled_programs(self) -> int:
        return cache_size(self.chain.compiled)


def is_karlo_checkpoint(directory: str | os.PathLike) -> bool:
    from unclip_jax.convert.karlo_checkpoint import CONFIG_FILE

    return (epath.Path(directory) / CONFIG_FILE).is_file()


def computing_in(checkpoint: KarloCheckpoint, dtype: str | None) -> KarloCheckpoint:
    """The checkpoint with every module computing in `dtype` (a name of `nn.precision`'s
    COMPUTE_DTYPES; None: as loaded) and its floating parameters cast to it."""
    if dtype is None:
        return checkpoint
    dtype = compute_dtype(dtype)
    modules = ("text_encoder", "prior", "decoder", "super_res")
    changed = {name: getattr(checkpoint, name).clone(dtype=dtype) for name in modules}
    return dataclasses.replace(checkpoint, params=cast_floats(checkpoint.params, dtype), **changed)


def load_karlo_stages(
    directory: str | os.PathLike, dtype: str | None = None
) -> tuple[KarloTextEncoder, KarloPriorStage, KarloDecoderStage, list[KarloSuperResStage]]:
    """(text encoder, prior, decoder, [super-res]) of a `save_karlo` directory, computing in
    `dtype` (None: as saved)."""
    checkpoint = computing_in(load_karlo(directory), dtype)
    chains = karlo_chains(checkpoint)
    text = KarloTextEncoder(checkpoint, epath.Path(directory))
    null = text.null_caption()
    return (
        text,
        KarloPriorStage(checkpoint, chains.prior, null),
        KarloDecoderStage(checkpoint, chains.decoder, null),
        [KarloSuperResStage(checkpoint, chains.super_res)],
    )
