"""Sampling the diffusion prior: strided steps, guidance on the x0 prediction, best-of-N reranking.

Per caption, N candidate embeddings are sampled and the one with the largest dot product with the
text embedding is kept (paper §2.1: "we generate two samples of z_i and select the one with a
higher dot product with z_t"). Classifier-free guidance runs the captioned and null halves as one
batch per step and guides the predicted clean embedding, as Karlo does. The caption prefix's keys
and values are computed once per call (`DiffusionPrior.encode_prefix`), not once per step.

    sample = make_prior_sampler(model, num_candidates=2)
    z_i, aux = sample(params, key, EncodedCaption(z_t, states, mask), schedule, 4.0, normalizer)

`schedule` is a `diffusion.schedules.Schedule` (e.g. `make_schedule("cosine", 1000, 64,
max_steps=...)`): every step count up to its padded length reuses the one compiled program, and so
do new captions, keys and guidance scales.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from unclip_jax import flop_meter, sharding
from unclip_jax.diffusion import guidance, samplers
from unclip_jax.diffusion.schedules import Schedule
from unclip_jax.models.prior import (
    DiffusionPrior,
    EmbeddingNormalizer,
    check_null_given,
    substitute_null,
)
from unclip_jax.sampling.checked import CheckedProgram
from unclip_jax.sampling.settings import FIXED_VARIANCES, check_guidance_scale

Array = jax.Array


class EncodedCaption(NamedTuple):
    """A batch of captions as the priors read them."""

    text_embed: Array  # z_t [B, Dz]
    token_states: Array  # [B, L, Dt]
    mask: Array  # [B, L] bool


# (null text embedding [Dz], null caption tokens [L, Dt], null mask [L]): the empty caption's
# encoding, for priors with null_conditioning="empty_caption".
NullCaption = tuple[Array, Array, Array]


def rerank_by_dot_product(candidates: Array, text_embed: Array) -> tuple[Array, Array]:
    """The candidate with the largest z_i·z_t per caption.

    candidates: [B, N, D], text_embed: [B, D] -> (best [B, D], scores [B, N]).
    """
    scores = jnp.einsum("bnd,bd->bn", candidates, text_embed.astype(candidates.dtype))
    best = jnp.take_along_axis(candidates, jnp.argmax(scores, axis=1)[:, None, None], axis=1)
    return best[:, 0], scores


def captioned_and_null(
    text_embed: Array,  # [B, Dz]
    text_tokens: Array,  # [B, L, Dt]
    text_mask: Array,  # [B, L]
    null: NullCaption | None,
) -> tuple[tuple[Array, Array, Array], Array | None]:
    """The guided pair of halves as one batch of 2B in `guidance.pair` order: (embed, tokens,
    mask), and `drop` [2B] marking the null rows for priors with a learned null (None when the
    null rows hold the empty caption's encoding `null` instead)."""
    caption = (text_embed, text_tokens, jnp.asarray(text_mask, bool))
    doubled = tuple(guidance.pair(c, c) for c in caption)
    is_null = guidance.is_unconditional(doubled[0].shape[0])
    if null is None:
        return doubled, is_null
    return substitute_null(is_null, *doubled, *null), None


def make_prior_sampler(
    model: DiffusionPrior,
    *,
    num_candidates: int = 2,
    sampler: str = "ddpm",  # or "ddim"
    var_type: str = "fixed_small",  # or "fixed_large" (β), "analytic" (Analytic-DPM, Bao 2022)
    clip: str = "none",  # or "static", "dynamic" (on the normalised x0)
    use_cache: bool = True,  # False: recompute the caption prefix every step
) -> CheckedProgram:
    """A compiled `sample(params, key, caption, schedule, guidance_scale, normalizer, null=None)
    -> (z_i [B, D], {"candidates": [B, N, D], "scores": [B, N]})`.

    `caption`: an `EncodedCaption` (z_t [B, Dz], token states [B, L, Dt], mask [B, L]); `null`
    is required when the model's null conditioning is the empty caption, and must be None
    otherwise. var_type="analytic" needs a schedule made with the prior's Γ table
    (`DiffusionSettings.schedule_for(steps, analytic)`): its x0_variance gives every step's
    variance inside the one program.
    """
    if num_candidates < 1:
        raise ValueError(f"num_candidates must be >= 1, got {num_candidates}")
    if sampler not in samplers.SAMPLERS:
        raise ValueError(f"sampler must be one of {sorted(samplers.SAMPLERS)}, got {sampler!r}")
    if var_type not in FIXED_VARIANCES:
        raise ValueError(f"var_type must be one of {FIXED_VARIANCES}, got {var_type!r}")

    def sample(
        params,
        key: Array,
        caption: EncodedCaption,
        schedule: Schedule,
        guidance_scale: float | Array,
        normalizer: EmbeddingNormalizer,
        null: NullCaption | None = None,
    ) -> tuple[Array, dict[str, Array]]:
        text_embed = caption[0]
        batch = text_embed.shape[0]
        rows = batch * num_candidates
        repeated = (jnp.repeat(a, num_candidates, axis=0) for a in caption)
        # the guided halves over the devices (one caption's two rows on two devices)
        doubled, drop = sharding.spread_rows(captioned_and_null(*repeated, null))
        variables = {"params": params}

        if use_cache:
            cache = model.apply(variables, *doubled, drop=drop, method=model.encode_prefix)
            model_fn = lambda x, t: model.apply(variables, cache, x, t, method=model.step)
        else:
            model_fn = lambda x, t: model.apply(variables, x, t, *doubled, drop=drop)
        spread_fn = lambda x, t: model_fn(*sharding.spread_rows((x, t)))

        denoise = guidance.guided_denoiser(spread_fn, guidance_scale)  # [BN, D] -> x0 [BN, D]

        noise_key, chain_key = jax.random.split(key)
        x_T = jax.random.normal(noise_key, (rows, model.embed_dim), jnp.float32)
        x0 = samplers.SAMPLERS[sampler](
            denoise, schedule, x_T, chain_key, mean_type="x0", var_type=var_type, clip=clip
        )
        candidates = normalizer.denormalize(x0).reshape(batch, num_candidates, -1)
        best, scores = rerank_by_dot_product(candidates, text_embed)
        return best, {"candidates": candidates, "scores": scores}

    def check(arguments: dict) -> None:
        if not isinstance(arguments["guidance_scale"], jax.Array):
            check_guidance_scale(arguments["guidance_scale"])
        check_null_given(arguments["null"], model.null_conditioning)
        if var_type == "analytic" and arguments["schedule"].x0_variance is None:
            raise ValueError(
                "var_type 'analytic' needs a schedule made with the prior's Γ table "
                "(DiffusionSettings.schedule_for(steps, analytic))"
            )

    return CheckedProgram(sample, flop_meter.jit(sample), check)
