"""Sampling the autoregressive prior (unCLIP §2.1): the caption prefix encoded once, then the K
codes decoded with the key/value cache (`sampling.autoregressive`), the logits of the captioned
half guided by the null-caption half of the same batch, nucleus sampling at a temperature.

The prefix ends with a token for the quantised z_i·z_t. The paper samples it "from the top half
of the distribution": each candidate draws its bucket inside the program from the training
histogram restricted to the buckets at or above the median's (`top_half_log_probs`), or takes
one fixed bucket (`one_bucket_log_probs`); with several candidates per caption the one with the
largest z_i·z_t is kept, as the diffusion prior's sampler does.
"""

import jax
import jax.numpy as jnp

from unclip_jax import flop_meter, sharding
from unclip_jax.diffusion.guidance import guide, pair, unpair
from unclip_jax.models.ar_prior import ARPrior
from unclip_jax.models.pca_quantizer import ARQuantizers, PCAQuantizer
from unclip_jax.models.prior import check_null_given
from unclip_jax.sampling import autoregressive
from unclip_jax.sampling.checked import CheckedProgram
from unclip_jax.sampling.prior import EncodedCaption, captioned_and_null, rerank_by_dot_product
from unclip_jax.sampling.settings import check_guidance_scale

Array = jax.Array
DOT_STREAM = 1 << 30  # fold_in index of the z_i·z_t draw, apart from the codes' 0 … K − 1


def top_half_log_probs(counts: Array) -> Array:
    """Training pairs per z_i·z_t bucket [Vd] → log-probabilities [Vd] of that histogram
    restricted to the buckets at or above the median's (the first whose cumulative count reaches
    half); empty buckets and those below get −inf."""
    counts = jnp.asarray(counts, jnp.float32)
    cumulative = jnp.cumsum(counts)
    median = jnp.argmax(cumulative >= 0.5 * cumulative[-1])
    kept = (jnp.arange(counts.shape[0]) >= median) & (counts > 0)
    logits = jnp.where(kept, jnp.log(jnp.where(kept, counts, 1.0)), -jnp.inf)
    return logits - jax.nn.logsumexp(logits)


def one_bucket_log_probs(bucket: Array, num_buckets: int) -> Array:
    """bucket [...] int → log-probabilities [..., Vd]: all the mass on that bucket."""
    return jnp.where(jnp.arange(num_buckets) == jnp.asarray(bucket)[..., None], 0.0, -jnp.inf)


# How the z_i·z_t token is chosen at sampling: name -> quantizers -> log-probabilities [Vd].
DOT_SAMPLING = {
    "top_half": lambda q: top_half_log_probs(q.dot_counts),  # the paper's (§2.1)
    "quantile": lambda q: one_bucket_log_probs(q.sample_dot_bucket, q.dot.num_buckets),
}


def dot_log_probs(quantizers: ARQuantizers, how: str) -> Array:
    """The distribution [Vd] of the z_i·z_t token that `how` (a `DOT_SAMPLING` name) draws from:
    the top half of the training histogram, or the bucket of `sample_dot_quantile`."""
    if how not in DOT_SAMPLING:
        raise ValueError(f"dot_sampling must be one of {sorted(DOT_SAMPLING)}, got {how!r}")
    if how == "top_half" and quantizers.dot_counts is None:
        raise ValueError(
            "dot_sampling 'top_half' needs the quantizers' z_i·z_t histogram, which these "
            "(saved before it was kept) lack; use 'quantile'"
        )
    return DOT_SAMPLING[how](quantizers)


def make_ar_prior_sampler(model: ARPrior, *, num_candidates: int = 1) -> CheckedProgram:
    """A compiled `sample(params, key, caption, dot, quantizer, guidance_scale, temperature,
    top_p, null=None) -> (z_i [B, D], {"codes": [B, N, K], "dot_buckets": [B, N],
    "candidates": [B, N, D], "scores": [B, N]})`; `caption` an `EncodedCaption`.

    `dot`: each caption's z_i·z_t token as buckets [B] int, or as log-probabilities [B, Vd] from
    which each of its N = `num_candidates` samples draws its own with `fold_in(key, DOT_STREAM)`
    (`dot_log_probs`). Of the N, the one with the largest z_i·z_t is kept (`rerank_by_dot_product`).
    `guidance_scale`: a number, or one per caption [B]. `quantizer` decodes codes [..., K] to
    z_i (`ARQuantizers`, or a bare `PCAQuantizer`). One program per batch shape: new captions,
    keys and settings do not recompile. `null` is the empty caption's (embedding [Dz], tokens
    [L, Dt], mask [L]) for "empty_caption" models.
    """
    if num_candidates < 1:
        raise ValueError(f"num_candidates must be >= 1, got {num_candidates}")
    n = num_candidates

    def sample(
        params,
        key: Array,
        caption: EncodedCaption,
        dot: Array,
        quantizer: ARQuantizers | PCAQuantizer,
        guidance_scale: float | Array = 1.0,
        temperature: float | Array = 1.0,
        top_p: float | Array = 1.0,
        null=None,
    ) -> tuple[Array, dict[str, Array]]:
        batch = caption[0].shape[0]
        repeated = (jnp.repeat(a, n, axis=0) for a in caption)
        doubled, drop = captioned_and_null(*repeated, null)
        dot_key = jax.random.fold_in(key, DOT_STREAM)
        dots = jax.random.categorical(dot_key, jnp.repeat(dot, n, axis=0), axis=-1)  # [BN]
        dots = dots.astype(jnp.int32)
        scale = jnp.asarray(guidance_scale, jnp.float32)
        scale = jnp.repeat(scale, n)[:, None] if scale.ndim else scale  # [BN, 1] or []
        variables = {"params": params}
        logits, cache = model.apply(
            variables, pair(dots, dots), *doubled, drop, method=model.encode_prefix
        )

        def choose(step_key, logits):  # [2BN, V] -> [BN]
            captioned, unconditional = unpair(logits)
            guided = guide(captioned, unconditional, scale, logits.shape[-1])
            return autoregressive.sample_token(step_key, guided, temperature, top_p)

        def step(cache, codes, index):  # codes [2BN] -> logits [2BN, V]
            codes = sharding.spread_rows(codes)  # the guided halves over the devices
            return model.apply(variables, cache, codes, index, method=model.decode_step)

        codes = autoregressive.decode(
            step,
            choose,
            logits,
            cache,
            model.num_codes,
            key,
            feed=lambda code: pair(code, code),
        )
        candidates = quantizer.decode(codes).reshape(batch, n, -1)
        best, scores = rerank_by_dot_product(candidates, caption[0])
        aux = {"codes": codes.reshape(batch, n, -1), "dot_buckets": dots.reshape(batch, n)}
        return best, aux | {"candidates": candidates, "scores": scores}

    return CheckedProgram(
        sample, flop_meter.jit(sample), lambda arguments: _check(arguments, model)
    )


def _check(arguments: dict, model: ARPrior) -> None:
    """The sampler's arguments checked by name on the host; numbers become float32 arrays and
    `dot` log-probabilities [B, Vd]."""
    if not isinstance(arguments["guidance_scale"], jax.Array):
        arguments["guidance_scale"] = check_guidance_scale(arguments["guidance_scale"])
    if not arguments["temperature"] > 0:
        raise ValueError(f"temperature must be > 0, got {arguments['temperature']}")
    if not 0 < arguments["top_p"] <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {arguments['top_p']}")
    components = arguments["quantizer"].num_components
    if components != model.num_codes:
        raise ValueError(
            f"the quantizer has {components} components, the model predicts {model.num_codes} codes"
        )
    check_null_given(arguments["null"], model.null_conditioning)
    arguments["dot"] = _dot_log_probs(arguments["dot"], arguments["caption"], model)
    for name in ("guidance_scale", "temperature", "top_p"):
        arguments[name] = jnp.asarray(arguments[name], jnp.float32)


def _dot_log_probs(dot, caption: EncodedCaption, model: ARPrior) -> Array:
    """`dot` as log-probabilities [B, Vd]: buckets [B] int become all the mass on theirs."""
    dot = jnp.asarray(dot)
    if jnp.issubdtype(dot.dtype, jnp.integer):
        dot = one_bucket_log_probs(dot, model.num_dot_buckets)
    want = (caption[0].shape[0], model.num_dot_buckets)
    if dot.shape != want:
        raise ValueError(
            f"dot must be buckets [B] or log-probabilities {list(want)}, got shape {dot.shape}"
        )
    return dot.astype(jnp.float32)
