"""Prior sampling: reranking, the cached prefix against the uncached chain, one compiled program,
the analytic variance."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unclip_jax.diffusion.analytic import AnalyticTable
from unclip_jax.diffusion.schedules import make_betas, make_schedule
from unclip_jax.models.prior import DiffusionPrior, EmbeddingNormalizer
from unclip_jax.sampling.prior import make_prior_sampler, rerank_by_dot_product
from unclip_jax.sampling.settings import DiffusionSettings

B, D, L, MAX_STEPS = 2, 8, 4, 12
MODEL = DiffusionPrior(embed_dim=D, num_tokens=L, width=32, depth=2, num_heads=4)


def _caption(seed: int):
    keys = jax.random.split(jax.random.PRNGKey(seed), 2)
    text_embed = jax.random.normal(keys[0], (B, D))
    tokens = jax.random.normal(keys[1], (B, L, D))
    mask = jnp.arange(L)[None] < jnp.array([L, 2])[:, None]
    return text_embed, tokens, mask


@pytest.fixture(scope="module")
def params():
    variables = jax.jit(MODEL.init)(
        jax.random.PRNGKey(0), jnp.zeros((B, D)), jnp.zeros((B,)), *_caption(0)
    )
    return nn.meta.unbox(variables["params"])


def test_rerank_keeps_larger_dot_product():
    text_embed = jnp.array([[1.0, 0.0], [0.0, 1.0]])
    candidates = jnp.array([[[0.2, 5.0], [0.9, -1.0]], [[3.0, 0.5], [0.0, 0.6]]])
    best, scores = rerank_by_dot_product(candidates, text_embed)
    np.testing.assert_allclose(scores, [[0.2, 0.9], [0.5, 0.6]])
    np.testing.assert_allclose(best, [[0.9, -1.0], [0.0, 0.6]])


def test_sampler_cached_equals_uncached_reranks_and_compiles_once(params):
    normalizer = EmbeddingNormalizer.create("unit_norm", D)
    schedule = make_schedule("cosine", 1000, 6, max_steps=MAX_STEPS)
    cached = make_prior_sampler(MODEL, num_candidates=3)
    uncached = make_prior_sampler(MODEL, num_candidates=3, use_cache=False)
    args = (params, jax.random.PRNGKey(1), _caption(1), schedule, 3.0, normalizer)
    best, aux = cached(*args)
    best_uncached, aux_uncached = uncached(*args)
    np.testing.assert_allclose(aux["candidates"], aux_uncached["candidates"], atol=1e-5)
    np.testing.assert_allclose(best, best_uncached, atol=1e-5)
    flops = {
        name: sampler.compiled.lower(*args, None).compile().cost_analysis()["flops"]
        for name, sampler in (("cached", cached), ("uncached", uncached))
    }
    print(f"prior sampler FLOPs: uncached {flops['uncached']:.0f}, cached {flops['cached']:.0f}")
    assert flops["cached"] < flops["uncached"]

    # Reranking: the kept candidate has the larger dot product with z_t, and candidates differ.
    text_embed = _caption(1)[0]
    dots = np.einsum("bnd,bd->bn", np.asarray(aux["candidates"]), np.asarray(text_embed))
    np.testing.assert_allclose(aux["scores"], dots, rtol=1e-5, atol=1e-6)
    chosen = np.asarray(aux["candidates"])[np.arange(B), dots.argmax(1)]
    np.testing.assert_allclose(best, chosen)
    assert np.abs(np.diff(np.asarray(aux["candidates"]), axis=1)).min() > 1e-3

    # New captions, keys, scales and step counts reuse the one program.
    shorter = make_schedule("cosine", 1000, 4, max_steps=MAX_STEPS)
    cached(params, jax.random.PRNGKey(2), _caption(2), shorter, 1.5, normalizer)
    assert cached.compiled._cache_size() == 1


def test_sampler_rejects_bad_arguments(params):
    normalizer = EmbeddingNormalizer.create("unit_norm", D)
    schedule = make_schedule("cosine", 1000, 4)
    sampler = make_prior_sampler(MODEL)
    with pytest.raises(ValueError, match="guidance_scale must be a finite number >= 0"):
        sampler(params, jax.random.PRNGKey(0), _caption(0), schedule, -1.0, normalizer)
    null = (jnp.zeros(D), jnp.zeros((L, D)), jnp.ones(L, bool))
    with pytest.raises(ValueError, match=r"null .* exactly when"):
        sampler(params, jax.random.PRNGKey(0), _caption(0), schedule, 1.0, normalizer, null)
    with pytest.raises(ValueError, match="num_candidates must be >= 1"):
        make_prior_sampler(MODEL, num_candidates=0)
    with pytest.raises(ValueError, match=r"var_type must be .* got 'learned_range'"):
        make_prior_sampler(MODEL, var_type="learned_range")


def test_analytic_variance_chain(params):
    """The prior's chain with Analytic-DPM's variance: a schedule without the Γ table is refused
    before compiling; Γ ≡ 1 reduces it to fixed-small's chain; a table of Gaussian data's Γ
    (s = 1: Γ_t = β̄_t) samples other candidates; step counts share the one program."""
    normalizer = EmbeddingNormalizer.create("unit_norm", D)
    settings = DiffusionSettings(prediction="x0", variance="analytic", max_steps=MAX_STEPS)
    sampler = make_prior_sampler(MODEL, num_candidates=2, var_type="analytic")
    args = (params, jax.random.PRNGKey(3), _caption(3))
    with pytest.raises(ValueError, match=r"^var_type 'analytic' needs a schedule made with"):
        sampler(*args, settings.schedule_for(6), 2.0, normalizer)
    assert sampler.compiled._cache_size() == 0

    ones = AnalyticTable(np.ones(1000), 1.0, 1)
    _, aux = sampler(*args, settings.schedule_for(6, ones), 2.0, normalizer)
    fixed = make_prior_sampler(MODEL, num_candidates=2)
    _, aux_fixed = fixed(
        *args, make_schedule("cosine", 1000, 6, max_steps=MAX_STEPS), 2.0, normalizer
    )
    np.testing.assert_allclose(aux["candidates"], aux_fixed["candidates"], rtol=1e-5, atol=1e-6)

    alphas_cumprod = np.cumprod(1.0 - make_betas("cosine", 1000))
    gaussian_table = AnalyticTable(1.0 - alphas_cumprod, 1.0, 1)
    _, aux_gaussian = sampler(*args, settings.schedule_for(4, gaussian_table), 2.0, normalizer)
    assert np.abs(np.asarray(aux_gaussian["candidates"] - aux["candidates"])).max() > 1e-3
    assert np.isfinite(np.asarray(aux_gaussian["candidates"])).all()
    assert sampler.compiled._cache_size() == 1
