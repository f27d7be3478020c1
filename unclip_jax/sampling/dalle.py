"""Sampling the DALL·E transformer's image codes: the caption (and, for completion, the kept
rows' codes) encoded once, then the remaining codes one at a time with the key/value cache
(`sampling.autoregressive`), at a temperature with nucleus (top-p) and top-k truncation.

One compiled program per batch shape and number of kept rows: new captions, keys, temperatures,
top-p and top-k values reuse it. The paper samples at temperature 1 without truncation.

    sample = make_dalle_sampler(model)
    codes = sample(params, text_ids, text_mask, key, temperature=1.0)       # [B, N]
    codes = sample(params, text_ids, text_mask, key, kept_codes=top_rows)    # completion
"""

import math

import jax
import jax.numpy as jnp

from unclip_jax import flop_meter
from unclip_jax.models.dalle import DalleTransformer, decoding_head, grow_cache, layer_params
from unclip_jax.sampling import autoregressive
from unclip_jax.sampling.checked import CheckedProgram

Array = jax.Array
# Codes a decoding chunk feeds: each chunk's steps attend over the positions before the chunk
# and the chunk (`models.dalle.grow_cache`), not all of them; the last ones copy the cache once.
CHUNK = 64


def check_truncation(temperature: float, top_p: float, top_k: int, vocab: int) -> None:
    """temperature > 0 and finite, top_p in (0, 1], top_k in [0, vocab] (0: no top-k)."""
    if not (
        isinstance(temperature, int | float) and math.isfinite(temperature) and temperature > 0
    ):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    if not (isinstance(top_p, int | float) and 0 < top_p <= 1):
        raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 0 <= top_k <= vocab:
        raise ValueError(f"top_k must be an integer in [0, {vocab}] (0: off), got {top_k!r}")


def top_k_logits(logits: Array, top_k: Array) -> Array:
    """logits [B, V] with all but the `top_k` largest per row at −inf (top_k = 0: unchanged,
    the sort skipped at run time)."""

    def truncated(logits: Array) -> Array:
        ordered = jnp.sort(logits, axis=-1)[:, ::-1]
        threshold = ordered[:, jnp.clip(top_k - 1, 0, logits.shape[-1] - 1)]
        return jnp.where(logits >= threshold[:, None], logits, -jnp.inf)

    return jax.lax.cond(top_k > 0, truncated, lambda x: x, logits)


def make_dalle_sampler(model: DalleTransformer, chunk: int = CHUNK) -> CheckedProgram:
    """A compiled `sample(params, text_ids [B, L], text_mask [B, L], key, temperature=1.0,
    top_p=1.0, top_k=0, kept_codes=None [B, K]) -> codes [B, N] int32`; with `kept_codes` the
    first K codes (whole rows or not) are kept and the rest sampled after them. The codes are
    drawn in chunks of `chunk` (the same codes for any chunk size), each step reading the cache
    written before its chunk and the chunk."""
    if not (isinstance(chunk, int) and chunk > 0):
        raise ValueError(f"chunk must be a positive integer, got {chunk!r}")
    config = model.config

    def program(params, text_ids, text_mask, key, temperature=1.0, top_p=1.0, top_k=0,
                kept_codes=None):  # fmt: skip
        kept = 0 if kept_codes is None else kept_codes.shape[1]
        layers = layer_params(params)  # sliced once, outside the loop over codes
        head = decoding_head(params)  # transposed once, likewise
        logits, cache = model.apply(
            {"params": params}, text_ids, text_mask, kept_codes, layers, method=model.prefill
        )

        def step(cache, code, index):  # feeds code kept + index, the last one chosen
            return model.apply(
                {"params": params},
                cache,
                code,
                kept + index,
                layers,
                head,
                method=model.decode_step,
            )

        def choose(key, logits):
            logits = top_k_logits(logits, top_k)
            return autoregressive.sample_token(key, logits, temperature, top_p)

        token = choose(jax.random.fold_in(key, 0), logits)
        codes, to_feed = [token[:, None]], config.num_codes - kept - 1
        for first in range(0, to_feed, chunk):  # each chunk reads the cache written before it
            count = min(chunk, to_feed - first)
            cache = grow_cache(cache, count)
            cache, token, tokens = autoregressive.continue_decoding(
                step, choose, cache, token, first, count, key
            )
            codes.append(tokens)
        codes = jnp.concatenate(codes, axis=1)
        if kept_codes is None:
            return codes
        return jnp.concatenate([jnp.asarray(kept_codes, jnp.int32), codes], axis=1)

    def check(arguments: dict) -> None:
        check_truncation(
            arguments["temperature"],
            arguments["top_p"],
            arguments["top_k"],
            config.image_vocab_size,
        )
        kept = arguments["kept_codes"]
        if kept is not None and not (kept.ndim == 2 and 0 < kept.shape[1] < config.num_codes):
            raise ValueError(
                f"kept_codes must be [B, K] with 0 < K < {config.num_codes} (the grid's codes), "
                f"got shape {tuple(kept.shape)}"
            )
        for name in ("temperature", "top_p"):
            arguments[name] = jnp.float32(arguments[name])
        arguments["top_k"] = jnp.int32(arguments["top_k"])

    return CheckedProgram(program, flop_meter.jit(program), check)
