"""The diffusion prior: causal mask, conditioning, prefix cache, paper-size parameter count."""

import importlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unclip_jax import sharding
from unclip_jax.models.prior import DiffusionPrior, EmbeddingNormalizer, substitute_null

B, D, L = 3, 16, 6
MODEL = DiffusionPrior(embed_dim=D, num_tokens=L, width=32, depth=2, num_heads=4, norm_in=True)


def _inputs(seed: int = 0):
    keys = jax.random.split(jax.random.PRNGKey(seed), 3)
    x_t = jax.random.normal(keys[0], (B, D))
    t = jnp.array([3.0, 250.0, 999.0])
    text_embed = jax.random.normal(keys[1], (B, D))
    tokens = jax.random.normal(keys[2], (B, L, D))
    mask = jnp.arange(L)[None] < jnp.array([L, 3, 1])[:, None]
    return x_t, t, text_embed, tokens, mask


@pytest.fixture(scope="module")
def params():
    variables = jax.jit(MODEL.init)(jax.random.PRNGKey(1), *_inputs())
    return nn.meta.unbox(variables["params"])


def _sequence(params, x_t, t, text_embed, tokens, mask):
    """Last block's output at every position [B, L+4, W] (captured intermediates)."""
    _, inter = MODEL.apply(
        {"params": params},
        x_t,
        t,
        text_embed,
        tokens,
        mask,
        capture_intermediates=lambda mdl, name: name == "__call__" and mdl.name == "block_1",
        mutable=["intermediates"],
    )
    return inter["intermediates"]["block_1"]["__call__"][0]


def test_causality_and_dependence(params):
    x_t, t, text_embed, tokens, mask = _inputs()
    mask = jnp.ones_like(mask)
    base = _sequence(params, x_t, t, text_embed, tokens, mask)
    changed = {
        "token 2": (2, (x_t, t, text_embed, tokens.at[:, 2].add(1.0), mask)),
        "text embedding": (L, (x_t, t, text_embed + 1.0, tokens, mask)),
        "timestep": (L + 1, (x_t, t + 100.0, text_embed, tokens, mask)),
        "noised embedding": (L + 2, (x_t + 1.0, t, text_embed, tokens, mask)),
    }
    for what, (position, args) in changed.items():
        out = _sequence(params, *args)
        before = np.abs(np.asarray(out[:, :position] - base[:, :position])).max()
        after = np.abs(np.asarray(out[:, position:] - base[:, position:])).min(axis=(0, 2))
        assert before == 0.0, f"changing the {what} changed earlier positions by {before}"
        assert after.min() > 1e-4, f"changing the {what} left a later position unchanged: {after}"
    prediction = jax.jit(MODEL.apply)
    y = prediction({"params": params}, x_t, t, text_embed, tokens, mask)
    for what, (_, args) in changed.items():
        delta = np.abs(np.asarray(prediction({"params": params}, *args) - y)).max()
        assert delta > 1e-3, f"the prediction ignores the {what}"


def test_padded_caption_tokens_are_ignored(params):
    x_t, t, text_embed, tokens, mask = _inputs()
    apply = jax.jit(MODEL.apply)
    y = apply({"params": params}, x_t, t, text_embed, tokens, mask)
    noise = 5.0 * jax.random.normal(jax.random.PRNGKey(3), tokens.shape)
    y_noisy_padding = apply(
        {"params": params}, x_t, t, text_embed, jnp.where(mask[..., None], tokens, noise), mask
    )
    np.testing.assert_allclose(y_noisy_padding, y, atol=1e-6)


def test_learned_null_conditioning(params):
    x_t, t, text_embed, tokens, mask = _inputs()
    drop = jnp.array([True, False, True])
    apply = jax.jit(MODEL.apply)
    y = apply({"params": params}, x_t, t, text_embed, tokens, mask, drop)
    # Dropped rows ignore their caption; kept rows equal the undropped prediction.
    other = apply({"params": params}, x_t, t, -text_embed, -tokens, ~mask, drop)
    np.testing.assert_allclose(y[0], other[0], atol=1e-6)
    np.testing.assert_allclose(y[2], other[2], atol=1e-6)
    np.testing.assert_allclose(y[1], apply({"params": params}, x_t, t, text_embed, tokens, mask)[1])
    null = substitute_null(
        drop,
        text_embed,
        tokens,
        mask,
        params["null_text_embed"],
        params["null_tokens"],
        jnp.ones((L,), bool),
    )
    np.testing.assert_allclose(y, apply({"params": params}, x_t, t, *null), atol=1e-6)


def test_prefix_cache_equals_uncached_and_costs_less(params):
    x_t, t, text_embed, tokens, mask = _inputs()
    drop = jnp.array([False, True, False])
    variables = {"params": params}

    def uncached(variables, x_t, t, text_embed, tokens, mask, drop):
        return MODEL.apply(variables, x_t, t, text_embed, tokens, mask, drop)

    def cached_step(variables, cache, x_t, t):
        return MODEL.apply(variables, cache, x_t, t, method=MODEL.step)

    cache = jax.jit(lambda v, *a: MODEL.apply(v, *a, method=MODEL.encode_prefix))(
        variables, text_embed, tokens, mask, drop
    )
    want = jax.jit(uncached)(variables, x_t, t, text_embed, tokens, mask, drop)
    got = jax.jit(cached_step)(variables, cache, x_t, t)
    np.testing.assert_allclose(got, want, atol=1e-5)
    flops_uncached = (
        jax.jit(uncached)
        .lower(variables, x_t, t, text_embed, tokens, mask, drop)
        .compile()
        .cost_analysis()["flops"]
    )
    flops_cached = jax.jit(cached_step).lower(variables, cache, x_t, t).compile().cost_analysis()
    flops_cached = flops_cached["flops"]
    print(f"prior step FLOPs: uncached {flops_uncached:.0f}, cached prefix {flops_cached:.0f}")
    assert flops_cached < 0.75 * flops_uncached


def test_embedding_normalizers_round_trip():
    z = 3.0 * jax.random.normal(jax.random.PRNGKey(4), (5, D)) + 1.0
    unit = EmbeddingNormalizer.create("unit_norm", D)
    x = unit.normalize(z)
    np.testing.assert_allclose(jnp.linalg.norm(x, axis=-1), np.sqrt(D), rtol=1e-5)
    np.testing.assert_allclose(
        unit.denormalize(x), z / jnp.linalg.norm(z, axis=-1, keepdims=True), atol=1e-6
    )
    stats = EmbeddingNormalizer.create("mean_std", D, mean=z.mean(0), std=z.std(0))
    np.testing.assert_allclose(stats.normalize(z).std(0), 1.0, rtol=1e-4)
    np.testing.assert_allclose(stats.denormalize(stats.normalize(z)), z, atol=1e-5)
    with pytest.raises(ValueError, match="'cosine'"):
        EmbeddingNormalizer.create("cosine", D)


def test_bad_shapes_and_modes_raise():
    x_t, t, text_embed, tokens, mask = _inputs()
    with pytest.raises(
        ValueError, match=r"text_tokens must have shape \(3, 6, 16\), got \(3, 5, 16\)"
    ):
        MODEL.init(jax.random.PRNGKey(0), x_t, t, text_embed, tokens[:, :5], mask)
    empty = DiffusionPrior(
        embed_dim=D, num_tokens=L, width=32, depth=1, num_heads=4, null_conditioning="empty_caption"
    )
    with pytest.raises(ValueError, match="drop needs null_conditioning='learned'"):
        empty.init(jax.random.PRNGKey(0), x_t, t, text_embed, tokens, mask, jnp.zeros(B, bool))
    with pytest.raises(ValueError, match="prefix cache needs causal=True"):
        MODEL.clone(causal=False).init(
            jax.random.PRNGKey(0), text_embed, tokens, mask, method="encode_prefix"
        )


def test_paper_config_has_one_billion_parameters():
    config = importlib.import_module("configs.prior_paper").get_config()
    model = DiffusionPrior(**config.model)
    shapes = jax.eval_shape(
        lambda: model.init(
            jax.random.PRNGKey(0),
            jnp.zeros((1, model.embed_dim)),
            jnp.zeros((1,)),
            jnp.zeros((1, model.text_embed_dim)),
            jnp.zeros((1, model.num_tokens, model.token_dim)),
        )
    )
    count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nn.meta.unbox(shapes)))
    print(f"paper-size diffusion prior: {count / 1e9:.3f}B parameters")
    assert abs(count - 1e9) <= 0.05e9


def test_activations_are_constrained_only_under_activation_rules(params):
    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    inputs = [jnp.concatenate([a, a[:1]]) for a in _inputs()]  # B = 4 splits over data × fsdp
    apply = jax.jit(lambda p, *a: MODEL.apply({"params": p}, *a))
    with sharding.activation_rules(mesh, sharding.DEFAULT_RULES):
        text = apply.lower(params, *inputs).as_text()
        constrained = apply(params, *inputs)
    found = [line for line in text.splitlines() if "sdy.sharding_constraint" in line]
    batch = '[{"data", "fsdp"}, {}'
    # Per block: q, k, v and attended [B, S, H, Dh]; the MLP hidden layer [B, S, M]; the
    # attention output, the MLP input and the block output [B, S, W].
    assert sum(f'{batch}, {{"tensor"}}, {{}}]>' in line for line in found) == 2 * 4
    assert sum(f'{batch}, {{"tensor"}}]>' in line for line in found) == 2
    assert sum(f"{batch}, {{}}]>" in line for line in found) == 2 * 3
    assert "sharding_constraint" not in apply.lower(params, *inputs).as_text()
    np.testing.assert_allclose(constrained, apply(params, *inputs), atol=1e-5)
