"""Learning-rate schedules, the weight-decay mask and gradient clipping."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unclip_jax import sharding
from unclip_jax.train import optimizer as optimizer_lib


def config(**overrides):
    base = dict(peak_lr=1.0, warmup_steps=10, total_steps=110, end_lr_factor=0.1)
    return optimizer_lib.OptimizerConfig(**{**base, **overrides})


def test_warmup_then_cosine_and_linear_decay():
    cosine = optimizer_lib.learning_rate_schedule(config())
    np.testing.assert_allclose([cosine(0), cosine(5), cosine(10)], [0.0, 0.5, 1.0], atol=1e-6)
    # Halfway through the decay: alpha + (1 - alpha) * 0.5 * (1 + cos(pi / 2)).
    np.testing.assert_allclose(cosine(60), 0.1 + 0.9 * 0.5, rtol=1e-5)
    np.testing.assert_allclose(cosine(110), 0.1, rtol=1e-5)
    linear = optimizer_lib.learning_rate_schedule(config(schedule="linear"))
    np.testing.assert_allclose([linear(60), linear(110)], [0.55, 0.1], rtol=1e-5)
    constant = optimizer_lib.learning_rate_schedule(config(schedule="constant"))
    np.testing.assert_allclose([constant(5), constant(1000)], [0.5, 1.0], rtol=1e-5)
    with pytest.raises(ValueError, match=r"schedule must be one of .*'step'"):
        optimizer_lib.learning_rate_schedule(config(schedule="step"))


class Model(nn.Module):
    @nn.compact
    def __call__(self, tokens):
        embed_init = nn.with_logical_partitioning(
            nn.initializers.normal(), (sharding.VOCAB, sharding.EMBED)
        )
        x = nn.Embed(10, 4, embedding_init=embed_init)(tokens)
        x = nn.LayerNorm()(x)
        kernel_init = nn.with_logical_partitioning(
            nn.initializers.lecun_normal(), (sharding.EMBED, sharding.MLP)
        )
        return nn.Dense(4, kernel_init=kernel_init)(x)


def test_decay_mask_spares_norms_biases_and_embeddings():
    boxed = jax.eval_shape(
        lambda: Model().init(jax.random.key(0), jnp.zeros((1, 3), jnp.int32))["params"]
    )
    mask = optimizer_lib.decay_mask(boxed)
    assert mask == {
        "Embed_0": {"embedding": False},
        "LayerNorm_0": {"scale": False, "bias": False},
        "Dense_0": {"kernel": True, "bias": False},
    }


def test_weight_decay_only_where_masked_and_clipping():
    params = {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)}
    mask = {"kernel": True, "bias": False}
    c = config(warmup_steps=0, schedule="constant", peak_lr=0.1, weight_decay=0.5)
    tx = optimizer_lib.make_optimizer(c, mask)
    zero = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zero, tx.init(params), params)
    np.testing.assert_allclose(updates["kernel"], -0.1 * 0.5, rtol=1e-6)
    np.testing.assert_allclose(updates["bias"], 0.0)
    # With a huge eps Adam's step is ≈ -lr · g / eps: it shows the gradient after clipping.
    c = config(warmup_steps=0, schedule="constant", peak_lr=1.0, eps=1e6, grad_clip_norm=1.0)
    tx = optimizer_lib.make_optimizer(c, mask)
    big = {"kernel": jnp.full((2, 2), 100.0), "bias": jnp.full(2, 100.0)}
    updates, _ = tx.update(big, tx.init(params), params)
    np.testing.assert_allclose(optimizer_lib.global_norm(updates) * 1e6, 1.0, rtol=1e-3)
    np.testing.assert_allclose(optimizer_lib.global_norm(big), np.sqrt(6) * 100, rtol=1e-6)
