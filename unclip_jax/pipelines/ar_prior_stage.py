"""The autoregressive prior (unCLIP §2.1) as a pipeline stage, beside the diffusion prior's
`stages.PriorStage`: the same `sample(key, caption, steps, scales, candidates)`.

It decodes the K PCA codes of z_i one per step with a key/value cache (`sampling.ar_prior`), so
its step count is K and no other (`CodeSteps`: a `prior_steps` other than K is refused by name).
The z_i·z_t token of each sample is drawn inside the program from the top half of the training
distribution (the paper's) or fixed at one quantile's bucket (`dot_sampling`); `candidates` > 1
samples per caption keep the largest z_i·z_t, as the diffusion prior does (the paper reranks
the diffusion prior's only, so the stage's default is 1).
"""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from unclip_jax.models.ar_prior import ARPrior, ar_prior_from_config
from unclip_jax.pipelines import store
from unclip_jax.pipelines.arguments import check_count
from unclip_jax.pipelines.stages import cache_size, check_learned_null, check_params, reading
from unclip_jax.sampling.ar_prior import DOT_SAMPLING, dot_log_probs, make_ar_prior_sampler
from unclip_jax.sampling.prior import EncodedCaption
from unclip_jax.sampling.settings import check_guidance_scale

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class CodeSteps:
    """An autoregressive prior's step range (`protocol.StepCounts`): one step per code, K."""

    sample_steps: int
    train_steps: int
    min_steps: int
    eta: float = 1.0  # every code is drawn at random

    @classmethod
    def of(cls, num_codes: int) -> "CodeSteps":
        return cls(sample_steps=num_codes, train_steps=num_codes, min_steps=num_codes)


@dataclasses.dataclass(frozen=True)
class ARSampling:
    """The "sampling" section of an AR prior's stage.json: its defaults and how the z_i·z_t
    token is chosen."""

    guidance_scale: float = 1.0  # classifier-free guidance of the code logits
    candidates: int = 1  # samples per caption, the largest z_i·z_t kept (1: no reranking)
    temperature: float = 1.0
    top_p: float = 1.0  # nucleus sampling's kept mass
    dot_sampling: str = "top_half"  # or "quantile": the bucket of sample_dot_quantile

    @classmethod
    def from_dict(cls, fields: dict) -> "ARSampling":
        unknown = sorted(set(fields) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"'sampling' has no fields {unknown}")
        settings = cls(**fields)
        check_guidance_scale(settings.guidance_scale, "sampling.guidance_scale")
        check_count("sampling.candidates", settings.candidates)
        if not settings.temperature > 0:
            raise ValueError(f"sampling.temperature must be > 0, got {settings.temperature}")
        if not 0 < settings.top_p <= 1:
            raise ValueError(f"sampling.top_p must be in (0, 1], got {settings.top_p}")
        if settings.dot_sampling not in DOT_SAMPLING:
            raise ValueError(
                f"sampling.dot_sampling must be one of {sorted(DOT_SAMPLING)}, "
                f"got {settings.dot_sampling!r}"
            )
        return settings


class ARPriorStage:
    """The AR prior: `sample(key, caption, steps, scales, candidates)` → z_i [B, D] at the
    training embeddings' norm."""

    accepts_fed_noise = False  # its randomness is the codes' draws, not a fed x_T

    def __init__(self, files: store.StageFiles):
        self.params = files.params
        with reading(files) as settings:
            self.model: ARPrior = ar_prior_from_config(settings["model"])
            self.settings = ARSampling.from_dict(settings["sampling"])
        self.quantizers = store.read_ar_quantizers(files)
        quantizers = self.quantizers
        sizes = (quantizers.num_components, quantizers.pca.num_buckets, quantizers.dot.num_buckets)
        model = (self.model.num_codes, self.model.num_buckets, self.model.num_dot_buckets)
        if sizes != model:
            raise ValueError(
                f"{files.directory / store.QUANTIZERS_FILE}: (codes, buckets, dot buckets) "
                f"= {sizes}; its stage.json's model has {model}"
            )
        check_learned_null(files, self.model.null_conditioning)
        try:
            self.dot = dot_log_probs(quantizers, self.settings.dot_sampling)  # [Vd]
        except ValueError as error:
            raise ValueError(f"{files.directory / store.STAGE_FILE}: {error}") from None
        self.diffusion = CodeSteps.of(self.model.num_codes)
        self.default_guidance = self.settings.guidance_scale
        self.default_candidates = self.settings.candidates
        check_params(files, self._example_call)
        self._samplers: dict[int, Any] = {}

    def sample(
        self,
        key: Array,
        caption: EncodedCaption,
        steps: int,  # K: the codes it decodes (`diffusion`'s only count)
        scales: Array,  # [B] guidance scale per caption (0: unconditional)
        candidates: int,  # samples per caption, the largest z_i·z_t kept
    ) -> Array:  # z_i [B, D]
        if int(steps) != self.model.num_codes:
            raise ValueError(
                f"the AR prior decodes its {self.model.num_codes} codes in "
                f"{self.model.num_codes} steps, got steps={steps}"
            )
        if candidates not in self._samplers:
            self._samplers[candidates] = make_ar_prior_sampler(
                self.model, num_candidates=candidates
            )
        rows = caption.text_embed.shape[0]
        z_i, _ = self._samplers[candidates](
            self.params,
            key,
            caption,
            jnp.broadcast_to(self.dot, (rows, self.dot.shape[0])),
            self.quantizers,
            jnp.asarray(scales, jnp.float32),
            self.settings.temperature,
            self.settings.top_p,
        )
        return z_i

    def _example_call(self, params: Any) -> Array:
        model = self.model
        tokens = (1, model.num_tokens)
        return model.apply(
            {"params": params},
            jnp.zeros((1, model.num_codes), jnp.int32),
            jnp.zeros((1,), jnp.int32),
            jnp.zeros((1, model.text_embed_dim)),
            jnp.zeros((*tokens, model.token_dim)),
            jnp.ones(tokens, bool),
        )

    def compiled_programs(self) -> int:
        return sum(cache_size(s.compiled) for s in self._samplers.values())
