"""The AR prior: PCA quantiser round trip, causality, cached decoding, nucleus sampling."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unclip_jax.models.ar_prior import ARPrior, ar_prior_loss
from unclip_jax.models.pca_quantizer import fit_pca_quantizer
from unclip_jax.sampling.ar_prior import make_ar_prior_sampler
from unclip_jax.sampling.autoregressive import sample_token

B, D, L, K, V = 2, 12, 4, 5, 32
MODEL = ARPrior(
    num_codes=K,
    num_buckets=V,
    num_dot_buckets=8,
    text_embed_dim=D,
    token_dim=D,
    num_tokens=L,
    width=32,
    depth=2,
    num_heads=4,
)


def _embeddings(count: int, seed: int = 0) -> np.ndarray:
    """Embeddings near a 4-dimensional subspace of R^D, with a little isotropic noise."""
    basis = np.linalg.qr(np.random.default_rng(99).standard_normal((D, 4)))[0].T  # [4, D]
    rng = np.random.default_rng(seed)
    scales = np.array([3.0, 2.0, 1.0, 0.5])
    return (rng.standard_normal((count, 4)) * scales) @ basis + 0.01 * rng.standard_normal(
        (count, D)
    )


def _caption(seed: int):
    keys = jax.random.split(jax.random.PRNGKey(seed), 2)
    mask = jnp.arange(L)[None] < jnp.array([L, 2])[:, None]
    return jax.random.normal(keys[0], (B, D)), jax.random.normal(keys[1], (B, L, D)), mask


@pytest.fixture(scope="module")
def params():
    codes = jnp.zeros((B, K), jnp.int32)
    variables = jax.jit(MODEL.init)(
        jax.random.PRNGKey(0), codes, jnp.zeros(B, jnp.int32), *_caption(0)
    )
    return nn.meta.unbox(variables["params"])


def test_pca_quantizer_round_trip_within_bound():
    train, test = _embeddings(2000, seed=0), _embeddings(200, seed=1)
    quantizer = fit_pca_quantizer(train, variance_fraction=0.99, num_buckets=1024)
    assert quantizer.num_components == 4  # the four real directions carry > 99% of the variance
    codes = quantizer.encode(train)
    assert codes.dtype == jnp.int32 and codes.min() >= 0 and codes.max() < 1024
    # Inside the fitted range each coefficient comes back within half a bucket.
    coefficients = quantizer.project(train)
    decoded = quantizer.quantizer.decode(codes)
    assert np.all(np.abs(decoded - coefficients) <= quantizer.quantizer.max_error + 1e-5)
    # The embedding itself: the PCA residual plus at most the quantisation error.
    reconstructed = quantizer.decode(quantizer.encode(test))
    residual = np.linalg.norm(test - quantizer.reconstruct(quantizer.project(test)), axis=1)
    bound = residual + float(np.linalg.norm(quantizer.quantizer.max_error)) + 1e-5
    inside = np.all(
        (quantizer.project(test) >= quantizer.quantizer.low)
        & (quantizer.project(test) <= quantizer.quantizer.high),
        axis=1,
    )
    errors = np.linalg.norm(test - reconstructed, axis=1)
    assert inside.mean() > 0.9
    assert np.all(errors[inside] <= bound[inside])
    assert errors.mean() < 0.05 * np.linalg.norm(test, axis=1).mean()
    explicit = fit_pca_quantizer(train, num_components=2, num_buckets=16)
    assert explicit.components.shape == (2, D) and int(explicit.encode(train).max()) == 15
    with pytest.raises(ValueError, match="num_components must be in"):
        fit_pca_quantizer(train, num_components=D + 1)


def test_causality(params):
    codes = jax.random.randint(jax.random.PRNGKey(1), (B, K), 0, V)
    dots = jnp.array([3, 5])
    caption = _caption(1)
    apply = jax.jit(MODEL.apply)
    logits = apply({"params": params}, codes, dots, *caption)
    assert logits.shape == (B, K, V)
    for k in range(K):
        changed = apply(
            {"params": params}, codes.at[:, k].set((codes[:, k] + 7) % V), dots, *caption
        )
        delta = np.abs(np.asarray(changed - logits)).max(axis=(0, 2))
        assert np.all(delta[: k + 1] == 0.0), f"changing code {k} changed logits of codes <= {k}"
        if k < K - 1:
            assert delta[k + 1 :].min() > 1e-4, f"code {k} does not reach later logits"
    text_embed, tokens, mask = caption
    for changed in (
        apply({"params": params}, codes, dots + 1, *caption),
        apply({"params": params}, codes, dots, text_embed + 1.0, tokens, mask),
    ):
        assert np.abs(np.asarray(changed - logits)).min(axis=-1).max() > 1e-4
    loss, aux = ar_prior_loss(logits, codes)
    assert abs(float(loss) - np.log(V)) < 1.0 and 0 <= float(aux["accuracy"]) <= 1


def test_cached_decoding_matches_teacher_forcing(params):
    codes = jax.random.randint(jax.random.PRNGKey(2), (B, K), 0, V)
    dots = jnp.array([1, 6])
    caption = _caption(2)
    drop = jnp.array([False, True])
    variables = {"params": params}
    want = jax.jit(MODEL.apply)(variables, codes, dots, *caption, drop)
    prefix = jax.jit(lambda v, *a: MODEL.apply(v, *a, method=MODEL.encode_prefix))
    step = jax.jit(lambda v, *a: MODEL.apply(v, *a, method=MODEL.decode_step))
    logits, cache = prefix(variables, dots, *caption, drop)
    got = [logits]
    for k in range(K - 1):
        logits, cache = step(variables, cache, codes[:, k], k)
        got.append(logits)
    np.testing.assert_allclose(jnp.stack(got, axis=1), want, atol=1e-5)


def test_sample_token_nucleus():
    logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05], [0.1, 0.2, 0.6, 0.1]]))
    keys = jax.random.split(jax.random.PRNGKey(3), 2000)
    draws = jax.vmap(lambda k: sample_token(k, logits, 1.0, 0.7))(keys)  # [N, 2]
    np.testing.assert_array_equal(np.unique(draws[:, 0]), [0, 1])  # 0.5 < 0.7 <= 0.5 + 0.3
    np.testing.assert_array_equal(np.unique(draws[:, 1]), [1, 2])
    assert abs(float((draws[:, 0] == 0).mean()) - 0.5 / 0.8) < 0.05
    greedy = jax.vmap(lambda k: sample_token(k, logits, 1.0, 1e-9))(keys[:50])
    np.testing.assert_array_equal(greedy, np.broadcast_to([0, 2], (50, 2)))


def test_sampler_top_p_tiny_is_greedy(params):
    quantizer = fit_pca_quantizer(_embeddings(500), num_components=K, num_buckets=V)
    caption, dots, scale = _caption(4), jnp.array([7, 7]), 2.0
    sampler = make_ar_prior_sampler(MODEL)
    z, aux = sampler(params, jax.random.PRNGKey(5), caption, dots, quantizer, scale, 1.0, 1e-9)
    codes = aux["codes"][:, 0]  # the one candidate per caption
    np.testing.assert_array_equal(aux["dot_buckets"][:, 0], dots)  # given buckets are kept
    # Greedy decoding by repeated teacher-forced forwards with guidance on the logits.
    apply = jax.jit(MODEL.apply)
    greedy = jnp.zeros((B, K), jnp.int32)
    doubled = tuple(jnp.concatenate([c, c]) for c in caption)
    drop = jnp.arange(2 * B) >= B
    for k in range(K):
        logits = apply(
            {"params": params},
            jnp.concatenate([greedy, greedy]),
            jnp.concatenate([dots, dots]),
            *doubled,
            drop,
        )
        captioned, unconditional = jnp.split(logits[:, k], 2)
        greedy = greedy.at[:, k].set(
            jnp.argmax(unconditional + scale * (captioned - unconditional), -1)
        )
    np.testing.assert_array_equal(codes, greedy)
    np.testing.assert_allclose(z, quantizer.decode(greedy), atol=1e-6)
    # Other keys and settings reuse the program; full nucleus sampling varies with the key.
    other = sampler(params, jax.random.PRNGKey(6), caption, dots, quantizer, 1.0, 1.0, 1.0)[1]
    again = sampler(params, jax.random.PRNGKey(7), caption, dots, quantizer, 1.0, 1.0, 1.0)[1]
    other, again = other["codes"], again["codes"]
    assert np.any(np.asarray(other) != np.asarray(again))
    assert sampler.compiled._cache_size() == 1
    with pytest.raises(ValueError, match="top_p must be in"):
        sampler(params, jax.random.PRNGKey(5), caption, dots, quantizer, 1.0, 1.0, 0.0)
    null = (caption[0][0], caption[1][0], caption[2][0])
    with pytest.raises(ValueError, match=r"null .* exactly when .* has 'learned'"):
        sampler(params, jax.random.PRNGKey(5), caption, dots, quantizer, null=null)
