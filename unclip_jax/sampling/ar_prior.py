"""Sampling the autoregressive prior (unCLIP §2.1): the caption prefix encoded once, then the K
codes decoded with the key/value cache (`sampling.autoregressive`), the logits of the captioned
half guided by the null-caption half of the same batch, nucleus sampling at a temperature.
"""

import jax
import jax.numpy as jnp

from unclip_jax.diffusion.guidance import guide
from unclip_jax.models.ar_prior import ARPrior
from unclip_jax.models.pca_quantizer import PCAQuantizer
from unclip_jax.models.prior import check_null_given
from unclip_jax.sampling import autoregressive
from unclip_jax.sampling.checked import CheckedProgram
from unclip_jax.sampling.prior import EncodedCaption, captioned_and_null
from unclip_jax.sampling.settings import check_guidance_scale

Array = jax.Array


def make_ar_prior_sampler(model: ARPrior) -> CheckedProgram:
    """A compiled `sample(params, key, caption, dot_bucket, quantizer, guidance_scale, temperature,
    top_p, null=None) -> (z_i [B, D], codes [B, K])`; `caption` an `EncodedCaption`.

    One program per batch shape: new captions, keys and settings do not recompile. `null` is the
    empty caption's (embedding [Dz], tokens [L, Dt], mask [L]) for "empty_caption" models.
    """

    def sample(
        params,
        key: Array,
        caption: EncodedCaption,
        dot_bucket: Array,
        quantizer: PCAQuantizer,
        guidance_scale: float | Array = 1.0,
        temperature: float | Array = 1.0,
        top_p: float | Array = 1.0,
        null=None,
    ) -> tuple[Array, Array]:
        doubled, drop = captioned_and_null(*caption, null)
        variables = {"params": params}
        dots = jnp.concatenate([dot_bucket, dot_bucket], axis=0)
        logits, cache = model.apply(variables, dots, *doubled, drop, method=model.encode_prefix)

        def choose(step_key, logits):  # [2B, V] -> [B]
            captioned, unconditional = jnp.split(logits, 2, axis=0)
            guided = guide(captioned, unconditional, guidance_scale, logits.shape[-1])
            return autoregressive.sample_token(step_key, guided, temperature, top_p)

        def step(cache, codes, index):  # codes [2B] -> logits [2B, V]
            return model.apply(variables, cache, codes, index, method=model.decode_step)

        codes = autoregressive.decode(
            step,
            choose,
            logits,
            cache,
            model.num_codes,
            key,
            feed=lambda code: jnp.concatenate([code, code]),
        )
        return quantizer.decode(codes), codes

    def check(arguments: dict) -> None:
        check_guidance_scale(arguments["guidance_scale"])
        if not arguments["temperature"] > 0:
            raise ValueError(f"temperature must be > 0, got {arguments['temperature']}")
        if not 0 < arguments["top_p"] <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {arguments['top_p']}")
        components = arguments["quantizer"].num_components
        if components != model.num_codes:
            raise ValueError(
                f"the quantizer has {components} components, the model predicts "
                f"{model.num_codes} codes"
            )
        check_null_given(arguments["null"], model.null_conditioning)
        arguments["dot_bucket"] = jnp.asarray(arguments["dot_bucket"], jnp.int32)
        for name in ("guidance_scale", "temperature", "top_p"):
            arguments[name] = jnp.float32(arguments[name])

    return CheckedProgram(sample, jax.jit(sample), check)
