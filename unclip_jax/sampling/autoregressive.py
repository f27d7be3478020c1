"""Token-by-token decoding with a key/value cache, as one `lax.scan` inside the caller's program:
the autoregressive prior's codes today, any decoder-only transformer's tokens alike.

The caller encodes its prefix once (giving the logits of the first token and the cache), then
each step feeds the last chosen token at its index and gets the next logits; no host sync per
token.
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

Array = jax.Array
# step(cache, token [B'], index []) -> (logits [B', V], cache)
StepFn = Callable[[Any, Array, Array], tuple[Array, Any]]
# choose(key, logits [B', V]) -> token [B] int32 (B' = B, or 2B for a guided pair of halves)
ChooseFn = Callable[[Array, Array], Array]


def nucleus_logits(logits: Array, top_p: Array) -> Array:
    """logits [B, V] with all but the smallest set of most likely tokens whose probability
    reaches `top_p` at −inf; the most likely token is always kept."""
    ordered = jnp.sort(logits, axis=-1)[:, ::-1]
    probs = jax.nn.softmax(ordered, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs  # mass of the strictly more likely tokens
    kept = jnp.sum(before < top_p, axis=-1)  # >= 1
    threshold = jnp.take_along_axis(ordered, (kept - 1)[:, None], axis=-1)
    return jnp.where(logits >= threshold, logits, -jnp.inf)


def sample_token(key: Array, logits: Array, temperature: Array, top_p: Array) -> Array:
    """Nucleus sampling (Holtzman et al. 2020) at `temperature`: logits [B, V] -> codes [B] int32.
    A tiny `top_p` decodes greedily; `top_p` 1 samples from the whole distribution (the sort of
    the nucleus is then skipped at run time)."""
    logits = logits.astype(jnp.float32) / temperature
    logits = jax.lax.cond(top_p < 1, nucleus_logits, lambda x, _: x, logits, top_p)
    return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


def decode(
    step: StepFn,
    choose: ChooseFn,
    first_logits: Array,  # [B', V]: the logits after the prefix
    cache: Any,
    num_tokens: int,
    key: Array,
    feed: Callable[[Array], Array] = lambda token: token,
) -> Array:  # [B, num_tokens] int32
    """Tokens 0 … num_tokens − 1; token k is chosen with `fold_in(key, k)`. `feed` maps a chosen
    token [B] to the step's input [B'] (e.g. both halves of a guided batch)."""
    first = choose(jax.random.fold_in(key, 0), first_logits)
    _, _, rest = continue_decoding(step, choose, cache, first, 0, num_tokens - 1, key, feed)
    return jnp.concatenate([first[:, None], rest], axis=1)


def continue_decoding(
    step: StepFn,
    choose: ChooseFn,
    cache: Any,
    token: Array,  # [B] token `first`, chosen
    first: int,
    count: int,
    key: Array,
    feed: Callable[[Array], Array] = lambda token: token,
) -> tuple[Any, Array, Array]:  # (cache, the last token [B], tokens first + 1 … first + count)
    """Feeds tokens first … first + count − 1 (the first one given), choosing token k + 1 after
    token k with `fold_in(key, k + 1)`, as `decode` does: decoding split into runs of tokens
    (each with a cache of its own shape) draws the same tokens as one run."""

    def body(carry, index):
        cache, token = carry
        logits, cache = step(cache, feed(token), index)
        token = choose(jax.random.fold_in(key, index + 1), logits)
        return (cache, token), token

    indices = jnp.arange(first, first + count)
    (cache, token), tokens = jax.lax.scan(body, (cache, token), indices)
    return cache, token, tokens.T
