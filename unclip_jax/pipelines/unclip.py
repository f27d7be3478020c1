"""unCLIP end to end (Ramesh et al. 2022): text → image, variations, interpolations, text diffs.

    from unclip_jax.pipelines.unclip import UnCLIP
    images = UnCLIP.load("demo/pipeline").generate(["a red circle"], num_images_per_prompt=4)

`UnCLIP.load(dir, prior=...)` reads the directory of `pipelines.store` (CLIP + tokenizer, a prior,
decoder, upsamplers; `prior="ar"` the autoregressive prior of §2.1 where the directory holds it,
default the diffusion prior), or a converted Karlo checkpoint (`pipelines.karlo`: Karlo's samplers
and defaults; no CLIP image encoder, so no variations, interpolations, text diffs or CLIP
reranking). Work is cut into chunks of at most `max_batch` rows, each padded to a bucketed size
(a power of two, a multiple of the device count) and sharded over the local devices, so every
stage runs one compiled program per bucket: new prompts, seeds, guidance scales and step counts
do not recompile (`compiled_programs()` counts them). The decoder's and upsamplers' initial latents
are drawn per row from the seed and the row's index, so their deterministic (DDIM η = 0) chains
do not depend on chunking, padding or the number of devices; the prior's samples and the noise
of ancestral steps come from the chunk's key.

An empty prompt is unconditional: the prior samples with guidance scale 0 for it (its null
conditioning alone) and the decoder sees the null caption. Prompts longer than the tokenizer's
context are truncated with a `CaptionTruncatedWarning`.
"""

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Unpack

import jax
import numpy as np

from unclip_jax import flop_meter
from unclip_jax.pipelines import karlo as karlo_stages
from unclip_jax.pipelines import protocol, store
from unclip_jax.pipelines.ar_prior_stage import ARPriorStage
from unclip_jax.pipelines.arguments import (
    GenerateOptions,
    RunSettings,
    check_count,
    check_dtype,
    check_prompts,
    check_seed,
    stage_steps,
)
from unclip_jax.pipelines.batches import RowBatches
from unclip_jax.pipelines.image_operations import ImageOperations
from unclip_jax.pipelines.images import (
    to_uint8,
)
from unclip_jax.pipelines.protocol import ImageEncoder
from unclip_jax.pipelines.stages import (
    DecoderStage,
    PriorStage,
    TextImageEncoder,
    UpsamplerStage,
)
from unclip_jax.sampling.prior import EncodedCaption
from unclip_jax.sampling.rerank import best_rows, clip_scores
from unclip_jax.sampling.settings import check_eta, check_guidance_scale

Array = jax.Array
# Keys of the per-row noise streams (decoder, then upsamplers), apart from the chunk keys.
NOISE_STREAM = 1 << 20
# The prior stage of each kind a pipeline directory may hold (`store.PRIOR_KINDS`).
PRIOR_STAGES = {"diffusion": PriorStage, "ar": ARPriorStage}


def _noise_rows(key: Array, ids: Array, shape: tuple[int, ...]) -> Array:
    """Per-row standard normal noise from (key, row id): ids [B] → [B, *shape]."""
    return jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(key, i), shape))(ids)


class UnCLIP(ImageOperations):
    """The text-conditional image generator of unCLIP and its image manipulations."""

    def __init__(
        self,
        clip: TextImageEncoder,
        prior: protocol.PriorStage,
        decoder: DecoderStage,
        upsamplers: Sequence[UpsamplerStage] = (),
        *,
        num_devices: int | None = None,  # local devices to shard over (default: all)
        max_batch: int = 64,  # rows per compiled batch
        progress: bool = False,  # a progress bar over chunks
    ):
        if prior.model.num_tokens != clip.context_length:
            raise ValueError(
                f"the prior reads {prior.model.num_tokens} caption tokens; the tokenizer gives "
                f"{clip.context_length}"
            )
        size = decoder.image_size
        for index, upsampler in enumerate(upsamplers):
            if upsampler.low_res != size:
                raise ValueError(
                    f"upsampler {index} takes {upsampler.low_res} px images; the stage before "
                    f"it gives {size} px"
                )
            size = upsampler.high_res
        self.batches = RowBatches(num_devices, max_batch, progress)
        self.num_devices = self.batches.num_devices
        self.clip, self.prior, self.decoder = clip, prior, decoder
        self.upsamplers = list(upsamplers)
        for stage in (clip, prior, decoder, *self.upsamplers):
            stage.params = self.batches.replicate(stage.params)
        self._noise = flop_meter.jit(_noise_rows, static_argnums=2)

    @classmethod
    def load(
        cls,
        directory: str | Path,
        prior: str | None = None,
        dtype: Any = None,
        **options: Any,
    ) -> "UnCLIP":
        """The pipeline saved in `directory` (see `pipelines.store`) with its prior of kind
        `prior` ("diffusion" or "ar"; None: the diffusion prior where the directory holds one),
        or a converted Karlo checkpoint (`unclip convert-karlo`, see `pipelines.karlo`; a
        diffusion prior); options go to __init__. `dtype` ("bfloat16" or jnp.bfloat16,
        "float32"; None: as saved): every stage's model computes in it and holds its parameters
        in it (bfloat16 halves their memory); the sampling chains stay float32. A prior the
        directory lacks is one error naming the directory and the priors it holds, before any
        parameters are read."""
        dtype = check_dtype(dtype)
        if karlo_stages.is_karlo_checkpoint(directory):
            if prior not in (None, "diffusion"):
                raise ValueError(
                    f"converted Karlo checkpoint {str(directory)!r} holds no {prior!r} prior; "
                    "it holds: 'diffusion'"
                )
            stages = karlo_stages.load_karlo_stages(directory, dtype)
            return cls(*stages, **options)
        files = store.read_pipeline(directory, prior, dtype)
        clip = TextImageEncoder(files.clip_dir, dtype)
        return cls(
            clip,
            PRIOR_STAGES[files.prior_kind](files.prior),
            DecoderStage(files.decoder, clip.example_caption()),
            [UpsamplerStage(upsampler) for upsampler in files.upsamplers],
            **options,
        )

    @property
    def image_size(self) -> int:
        return self.upsamplers[-1].high_res if self.upsamplers else self.decoder.image_size

    def compiled_programs(self) -> dict[str, int]:
        """Programs compiled so far, per stage."""
        counts = {
            "clip": self.clip.compiled_programs(),
            "prior": self.prior.compiled_programs(),
            "decoder": self.decoder.compiled_programs(),
            "noise": self._noise._cache_size(),
        }
        for index, upsampler in enumerate(self.upsamplers):
            counts[store.upsampler_name(index)] = upsampler.compiled_programs()
        return counts

    def _chain(self, rows: dict, index: int, chain: RunSettings) -> dict[str, Array]:
        """Rows (ids, mask, drop_caption, noise_id; image_embed, drop_image and/or x_T when
        given) → final images; the prior runs where no image_embed is given."""
        key = jax.random.fold_in(chain.key, index)

        def fed(stage: str) -> dict[str, Array]:  # fed latents / noise rows of a stage
            return {k: rows[f"{k}/{stage}"] for k in ("latents", "noise") if f"{k}/{stage}" in rows}

        text_embed, states = self.clip.encode_text(rows["ids"], rows["mask"])
        if "image_embed" in rows:
            image_embed = rows["image_embed"]
        else:
            image_embed = self.prior.sample(
                jax.random.fold_in(key, 0),
                EncodedCaption(text_embed, states, rows["mask"]),
                chain.prior_steps,
                rows["prior_scale"],
                chain.prior_candidates,
                **fed(store.PRIOR),
            )
        caption = {"ids": rows["ids"], "mask": rows["mask"], "states": states}
        caption["text_embed"] = text_embed
        cond = self.batches.shard(
            self.decoder.conditioning(
                image_embed, caption, rows["drop_caption"], rows.get("drop_image")
            )
        )
        decoder_fed = fed(store.DECODER)
        x_T = decoder_fed.pop("latents", rows.get("x_T"))
        if x_T is None:
            x_T = self._noise(
                jax.random.fold_in(chain.key, NOISE_STREAM), rows["noise_id"], self.decoder.shape
            )
        images = self.decoder.sample(
            self.batches.shard(x_T),
            cond,
            chain.decoder_steps,
            chain.decoder_guidance,
            chain.eta,
            jax.random.fold_in(key, 1),
            **decoder_fed,
        )
        for k, steps in enumerate(chain.upsampler_steps):  # () stops after the decoder
            upsampler = self.upsamplers[k]
            up_fed = fed(store.upsampler_name(k))
            up_T = up_fed.pop("latents", None)
            if up_T is None:
                noise_key = jax.random.fold_in(chain.key, NOISE_STREAM + 1 + k)
                up_T = self._noise(noise_key, rows["noise_id"], upsampler.shape)
            images = upsampler.sample(
                self.batches.shard(up_T),
                self.batches.shard(images),
                steps,
                upsampler.diffusion.eta,
                jax.random.fold_in(key, 2 + k),
                **up_fed,
            )
        out = {"images": images, "image_embed": image_embed}
        if chain.score:
            out["scores"] = clip_scores(self.clip.encode_image(images), text_embed)
        return out

    def _settings(
        self,
        seed: int,
        *,
        decoder_steps: int | None = None,
        upsampler_steps: int | Sequence[int] | None = None,
        decoder_guidance: float | None = None,
        prior_steps: int | None = None,
        prior_candidates: int = 1,
        eta: float = 0.0,
        score: bool = False,
        upsample: bool = True,  # False: no upsampler runs, images at the decoder's resolution
    ) -> RunSettings:
        """Checked settings (before anything is computed), defaults from the stages."""
        if upsampler_steps is None or isinstance(upsampler_steps, (int, np.integer)):
            upsampler_steps = [upsampler_steps] * len(self.upsamplers)
        if len(upsampler_steps) != len(self.upsamplers):
            raise ValueError(
                f"upsampler_steps needs {len(self.upsamplers)} values, got {upsampler_steps}"
            )
        up_steps = tuple(
            stage_steps("upsampler_steps", u.diffusion, s)
            for u, s in zip(self.upsamplers, upsampler_steps, strict=True)
        )
        if not isinstance(upsample, (bool, np.bool_)):
            raise ValueError(f"upsample must be True or False, got {upsample!r}")
        if decoder_guidance is None:
            decoder_guidance = self.decoder.default_guidance
        return RunSettings(
            key=jax.random.key(check_seed(seed)),
            prior_steps=stage_steps("prior_steps", self.prior.diffusion, prior_steps),
            prior_candidates=check_count("prior_candidates", prior_candidates),
            decoder_steps=stage_steps("decoder_steps", self.decoder.diffusion, decoder_steps),
            decoder_guidance=check_guidance_scale(decoder_guidance, "decoder_guidance"),
            eta=check_eta(eta),
            upsampler_steps=up_steps if upsample else (),
            score=score,
        )

    def _caption_rows(self, captions: list[str]) -> dict[str, np.ndarray]:
        ids, mask = self.clip.tokenize(captions)
        return {"ids": ids, "mask": mask}

    @property
    def embeds_images(self) -> bool:
        """Whether its CLIP embeds images (variations, interpolations and text diffs need it; a
        converted Karlo checkpoint has a text encoder only)."""
        return isinstance(self.clip, ImageEncoder)

    def _require_image_encoder(self, what: str) -> None:
        """ValueError before any compute when the checkpoint cannot embed images (Karlo)."""
        if not self.embeds_images:
            raise ValueError(
                f"{what} needs CLIP image embeddings of images, and this checkpoint has no image "
                "encoder (a converted Karlo checkpoint has a CLIP text encoder only)"
            )

    def _given_embedding_rows(
        self, image_embeds: np.ndarray | None, null_image: bool, images: int, rerank: int
    ) -> dict[str, np.ndarray]:
        """Rows of z_i given in place of the prior's ("image_embed", each image's repeated for
        its rerank candidates) or the decoder's null z_i ("drop_image"), checked first."""
        if not isinstance(null_image, (bool, np.bool_)):
            raise ValueError(f"null_image must be True or False, got {null_image!r}")
        if image_embeds is None:
            if not null_image:
                return {}
            return {
                "image_embed": np.zeros((images * rerank, self.embed_dim), np.float32),
                "drop_image": np.ones(images * rerank, bool),
            }
        if null_image:
            raise ValueError("give image_embeds or null_image=True, not both")
        given = np.asarray(image_embeds, np.float32)
        if given.shape != (images, self.embed_dim) or not np.all(np.isfinite(given)):
            raise ValueError(
                f"image_embeds must be finite [{images}, {self.embed_dim}] (one z_i per image), "
                f"got shape {given.shape}"
            )
        return {"image_embed": np.repeat(given, rerank, axis=0)}

    @property
    def embed_dim(self) -> int:
        """Width D of the CLIP embeddings z_i and z_t the stages exchange."""
        ids, mask = self.clip.tokenize([""])
        return jax.eval_shape(self.clip.encode_text, ids, mask)[0].shape[-1]

    def _fed_rows(
        self,
        latents: dict[str, np.ndarray] | None,
        noise: dict[str, np.ndarray] | None,
        count: int,
        chain: RunSettings,
    ) -> dict[str, np.ndarray]:
        """Fed initial latents and per-step noise as rows ("latents/<stage>", "noise/<stage>"),
        their stages and shapes checked before any compute."""
        stages: dict[str, Any] = {store.PRIOR: self.prior, store.DECODER: self.decoder}
        shapes: dict[str, tuple] = {store.DECODER: self.decoder.shape}
        if self.prior.accepts_fed_noise:  # its fed latents are z_i rows; refused otherwise
            shapes[store.PRIOR] = (self.prior.model.embed_dim,)
        steps = {store.PRIOR: chain.prior_steps, store.DECODER: chain.decoder_steps}
        for k, (upsampler, up_steps) in enumerate(
            zip(self.upsamplers, chain.upsampler_steps, strict=True)
        ):
            name = store.upsampler_name(k)
            stages[name], shapes[name], steps[name] = upsampler, upsampler.shape, up_steps
        rows = {}
        for kind, given in (("latents", latents or {}), ("noise", noise or {})):
            unknown = sorted(set(given) - set(stages))
            if unknown:
                raise ValueError(f"{kind} keys must be stages {sorted(stages)}, got {unknown}")
            for name, value in given.items():
                if (kind == "noise" or name == store.PRIOR) and not stages[name].accepts_fed_noise:
                    raise ValueError(
                        f"the {name} stage of this checkpoint takes no fed {kind} "
                        "(the stages of a Karlo checkpoint do)"
                    )
                want = (count, *shapes[name])
                if kind == "noise":
                    want = (count, steps[name] - 1, *shapes[name])
                value = np.asarray(value, np.float32)
                if value.shape != want:
                    raise ValueError(
                        f"{kind}[{name!r}] must have shape {want} (rows, "
                        f"{'steps − 1, ' if kind == 'noise' else ''}…), got {value.shape}"
                    )
                rows[f"{kind}/{name}"] = value
        prior_fed = {"latents/prior", "noise/prior"} & set(rows)
        if prior_fed and chain.prior_candidates != 1:
            raise ValueError(
                f"fed prior latents or noise need prior_candidates=1, got {chain.prior_candidates}"
            )
        return rows

    def generate_float(
        self,
        prompts: Sequence[str],
        num_images_per_prompt: int = 1,
        seed: int = 0,
        prior_steps: int | None = None,
        decoder_steps: int | None = None,
        upsampler_steps: int | Sequence[int] | None = None,
        prior_guidance: float | None = None,
        decoder_guidance: float | None = None,
        prior_candidates: int | None = None,
        rerank_candidates: int = 1,
        *,
        latents: dict[str, np.ndarray] | None = None,
        noise: dict[str, np.ndarray] | None = None,
        image_embeds: np.ndarray | None = None,
        null_image: bool = False,
    ) -> dict[str, np.ndarray]:
        """`generate` before conversion: {"images": [P·n, S, S, 3] float in [-1, 1],
        "image_embed": [P·n, D], "scores": [P·n] CLIP cosine of the kept images (absent without
        an image encoder)}.

        To reproduce another implementation's chain, `latents` gives stages' initial latents
        ({"prior": [R, D] (normalised space), "decoder": [R, S, S, 3], "upsampler_0": …}) and
        `noise` their per-step noise ({stage: [R, steps − 1, …]}, the noise added after each
        step in sampling order; the last step adds none), R = P·n·rerank_candidates rows in
        output order. Fed prior latents and any fed noise need stages that take them (Karlo's).

        The decoder's image embedding need not come from the prior (the ablations of §5.1):
        `image_embeds` [P·n, D] gives each image's z_i (e.g. the CLIP text embedding, or another
        image's); `null_image=True` gives the decoder its learned null z_i, so that it reads
        the caption alone (with a decoder trained without image embeddings: GLIDE).
        """
        prompts = check_prompts(prompts)
        n = check_count("num_images_per_prompt", num_images_per_prompt)
        rerank = check_count("rerank_candidates", rerank_candidates)
        if rerank > 1:
            self._require_image_encoder(f"rerank_candidates={rerank}")
        if prior_guidance is None:
            prior_guidance = self.prior.default_guidance
        prior_guidance = check_guidance_scale(prior_guidance, "prior_guidance")
        if prior_candidates is None:
            prior_candidates = self.prior.default_candidates
        chain = self._settings(
            seed,
            decoder_steps=decoder_steps,
            upsampler_steps=upsampler_steps,
            decoder_guidance=decoder_guidance,
            prior_steps=prior_steps,
            prior_candidates=prior_candidates,
            eta=self.decoder.diffusion.eta,
            score=isinstance(self.clip, ImageEncoder),
        )
        per_prompt = n * rerank
        unconditional = np.repeat([not p.strip() for p in prompts], per_prompt)
        fed = self._fed_rows(latents, noise, len(unconditional), chain)
        rows = self._caption_rows([p.strip() for p in prompts])
        rows = {k: np.repeat(v, per_prompt, axis=0) for k, v in rows.items()}
        rows["drop_caption"] = unconditional
        rows["prior_scale"] = np.where(unconditional, 0.0, prior_guidance).astype(np.float32)
        rows["noise_id"] = np.arange(len(unconditional), dtype=np.int32)
        rows.update(fed)
        rows.update(self._given_embedding_rows(image_embeds, null_image, len(prompts) * n, rerank))
        out = self.batches.map(lambda r, i: self._chain(r, i, chain), rows, "generate")
        if "scores" not in out:
            return out
        best = best_rows(out["scores"], rerank)
        return {k: v[best] for k, v in out.items()}

    def generate(
        self,
        prompts: Sequence[str],
        num_images_per_prompt: int = 1,
        seed: int = 0,
        **options: Unpack[GenerateOptions],
    ) -> np.ndarray:
        """Images for each prompt: uint8 [P·n, S, S, 3], prompt-major.

        Steps, guidance scales and prior_candidates default to the stages' (our stages: guidance
        4, 2 candidates; Karlo's: prior 25 steps at guidance 4, decoder 25 at 8, super-res 7,
        1 candidate). Guidance scales are ≥ 0 (1 = the conditional model). prior_candidates:
        z_i samples per image, the largest z_i·z_t kept (§2.1); rerank_candidates: final images
        per image, the largest CLIP score kept (needs an image encoder).
        """
        return to_uint8(
            self.generate_float(prompts, num_images_per_prompt, seed, **options)["images"]
        )
