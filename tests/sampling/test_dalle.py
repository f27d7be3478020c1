"""DALL·E code sampling: top-k = 1 decodes exactly the greedy chain of teacher-forced calls,
completion keeps the given codes and continues them, decoding in chunks draws the same codes,
one compiled program for new captions, keys and settings, and bad settings refused before
compiling."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unclip_jax.models import dalle
from unclip_jax.sampling.dalle import make_dalle_sampler

CONFIG = dalle.DalleConfig(
    text_vocab_size=20, text_length=5, image_vocab_size=12, grid=3, width=32, depth=4,
    num_heads=2, head_dim=16, conv_kernel=3,
)  # fmt: skip
MODEL = dalle.DalleTransformer(CONFIG)
TEXT = jnp.asarray([[3, 4, 5, 0, 0], [6, 7, 8, 9, 1]])
MASK = jnp.asarray([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)


@pytest.fixture(scope="module")
def params():
    codes = jnp.zeros((2, CONFIG.num_codes), jnp.int32)
    return jax.jit(MODEL.init)(jax.random.key(0), TEXT, MASK, codes)["params"]


def greedy(params, kept: np.ndarray | None = None) -> np.ndarray:
    """The greedy chain by teacher forcing: code j = argmax of the logits given codes < j."""
    forward = jax.jit(lambda c: MODEL.apply({"params": params}, TEXT, MASK, c)[1])
    codes = np.zeros((2, CONFIG.num_codes), np.int32)
    start = 0 if kept is None else kept.shape[1]
    if kept is not None:
        codes[:, :start] = kept
    for j in range(start, CONFIG.num_codes):
        codes[:, j] = np.argmax(np.asarray(forward(jnp.asarray(codes)))[:, j], axis=-1)
    return codes


def test_top_k_one_is_the_greedy_chain_and_completion_keeps_its_rows(params):
    sample = make_dalle_sampler(MODEL)
    got = sample(params, TEXT, MASK, jax.random.key(1), top_k=1)
    np.testing.assert_array_equal(got, greedy(params))
    kept = np.asarray([[1, 2, 3], [4, 5, 6]], np.int32)  # the top row of the 3×3 grid
    completed = sample(params, TEXT, MASK, jax.random.key(2), top_k=1, kept_codes=jnp.asarray(kept))
    np.testing.assert_array_equal(completed[:, :3], kept)
    np.testing.assert_array_equal(completed, greedy(params, kept))


def test_decoding_in_chunks_draws_the_same_codes(params):
    # chunks of 2 codes: four cache segments after the caption's, one copy of the cache each
    whole, chunked = make_dalle_sampler(MODEL), make_dalle_sampler(MODEL, chunk=2)
    for key in range(3):
        np.testing.assert_array_equal(
            chunked(params, TEXT, MASK, jax.random.key(key)),
            whole(params, TEXT, MASK, jax.random.key(key)),
        )
    kept = jnp.asarray([[1, 2, 3, 4], [4, 5, 6, 7]], jnp.int32)  # not a whole number of chunks
    np.testing.assert_array_equal(
        chunked(params, TEXT, MASK, jax.random.key(7), kept_codes=kept),
        whole(params, TEXT, MASK, jax.random.key(7), kept_codes=kept),
    )
    np.testing.assert_array_equal(
        chunked(params, TEXT, MASK, jax.random.key(8), top_k=1), greedy(params)
    )


def test_one_program_for_new_keys_captions_and_settings(params):
    sample = make_dalle_sampler(MODEL)
    a = sample(params, TEXT, MASK, jax.random.key(3))
    b = sample(params, TEXT, MASK, jax.random.key(3))
    c = sample(params, TEXT[::-1], MASK[::-1], jax.random.key(4), temperature=0.7, top_p=0.9)
    sample(params, TEXT, MASK, jax.random.key(5), top_k=4)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert sample.compiled._cache_size() == 1


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(temperature=0.0), "temperature must be a finite number > 0"),
        (dict(top_p=1.5), r"top_p must be in \(0, 1\]"),
        (dict(top_k=-1), r"top_k must be an integer in \[0, 12\]"),
        (dict(kept_codes=jnp.zeros((2, 9), jnp.int32)), r"0 < K < 9"),
    ],
)
def test_bad_settings_are_refused_before_compiling(params, settings, message):
    sample = make_dalle_sampler(MODEL)
    with pytest.raises(ValueError, match=message):
        sample(params, TEXT, MASK, jax.random.key(0), **settings)
    assert sample.compiled._cache_size() == 0
