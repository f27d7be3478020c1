"""Symmetric InfoNCE: closed forms, multi-positive targets, the temperature cap."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unclip_jax.train.contrastive import clip_logits, contrastive_loss, same_caption


def _reference(logits, positives):
    """Numpy soft-target cross-entropy, both directions."""

    def direction(z, p):
        z = z - z.max(-1, keepdims=True)
        log_softmax = z - np.log(np.exp(z).sum(-1, keepdims=True))
        targets = p / p.sum(-1, keepdims=True)
        return -(targets * log_softmax).sum(-1).mean()

    return (direction(logits, positives) + direction(logits.T, positives.T)) / 2


def test_matches_reference_and_plain_infonce():
    rng = np.random.RandomState(0)
    image, text = rng.randn(6, 8).astype(np.float32), rng.randn(6, 8).astype(np.float32)
    scale = jnp.asarray(math.log(10.0))
    loss, metrics = contrastive_loss(jnp.asarray(image), jnp.asarray(text), scale)
    logits = np.asarray(clip_logits(jnp.asarray(image), jnp.asarray(text), scale))
    np.testing.assert_allclose(loss, _reference(logits, np.eye(6)), rtol=1e-5)
    # Plain InfoNCE: cross-entropy with the diagonal as labels.
    labels = jnp.arange(6)
    ce = lambda z: -jnp.mean(jax.nn.log_softmax(z, -1)[labels, labels])
    np.testing.assert_allclose(loss, (ce(logits) + ce(logits.T)) / 2, rtol=1e-5)
    assert 0.0 <= float(metrics["image_to_text_accuracy"]) <= 1.0


def test_duplicate_captions_are_multi_positive():
    tokens = jnp.asarray([[1, 5, 2], [1, 6, 2], [1, 5, 2], [1, 7, 2]])
    positives = same_caption(tokens)
    assert positives.tolist()[0] == [True, False, True, False]
    rng = np.random.RandomState(1)
    image, text = rng.randn(4, 8).astype(np.float32), rng.randn(4, 8).astype(np.float32)
    scale = jnp.asarray(2.0)
    loss, _ = contrastive_loss(jnp.asarray(image), jnp.asarray(text), scale, positives)
    logits = np.asarray(clip_logits(jnp.asarray(image), jnp.asarray(text), scale))
    np.testing.assert_allclose(loss, _reference(logits, np.asarray(positives, float)), rtol=1e-5)
    # Duplicated captions: multi-positive targets prefer the two images' embeddings to coincide
    # (the minimum, log 2 / 2 here), single-positive targets prefer them apart.
    big = jnp.asarray(math.log(100.0))
    separated = jnp.eye(4, 8)
    coincident = separated.at[2].set(separated[0])

    def loss(embeds, positives=None):
        return float(contrastive_loss(embeds, embeds, big, positives)[0])

    np.testing.assert_allclose(loss(coincident, positives), math.log(2) / 2, atol=1e-4)
    assert loss(coincident, positives) < loss(separated, positives)
    assert loss(separated) < loss(coincident)


def test_temperature_capped_at_100():
    rng = np.random.RandomState(2)
    image, text = jnp.asarray(rng.randn(3, 4)), jnp.asarray(rng.randn(3, 4))
    capped = clip_logits(image, text, jnp.asarray(7.0))
    at_cap = clip_logits(image, text, jnp.asarray(math.log(100.0)))
    np.testing.assert_allclose(capped, at_cap, rtol=1e-6)
    assert float(jnp.abs(capped).max()) <= 100.0 + 1e-4
    grad = jax.grad(lambda s: contrastive_loss(image, text, s)[0])(jnp.asarray(7.0))
    assert float(grad) == 0.0


def test_bad_shapes():
    with pytest.raises(ValueError, match=r"both be \[B, P\].*\(3, 4\) and \(2, 4\)"):
        contrastive_loss(jnp.zeros((3, 4)), jnp.zeros((2, 4)), jnp.asarray(1.0))
    with pytest.raises(ValueError, match=r"positives must be \[3, 3\]"):
        contrastive_loss(
            jnp.ones((3, 4)), jnp.ones((3, 4)), jnp.asarray(1.0), jnp.eye(2, dtype=bool)
        )
