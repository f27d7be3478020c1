"""CLIP's symmetric contrastive (InfoNCE) loss (Radford et al. 2021, Fig. 3), with multi-positive
targets: an image whose caption appears several times in the batch counts every copy as a match.
"""

import math

import jax
import jax.numpy as jnp

Array = jax.Array

MAX_LOGIT_SCALE = 100.0  # CLIP clips the learned temperature so logits scale at most 100×


def clip_logits(
    image_embeds: Array,  # [B, P]
    text_embeds: Array,  # [B, P]
    logit_scale: Array,  # [] log of the inverse temperature
    max_logit_scale: float = MAX_LOGIT_SCALE,
) -> Array:  # [B_image, B_text] float32
    """exp(min(logit_scale, log max)) · cosine similarity of every image with every text."""
    image = image_embeds.astype(jnp.float32)
    text = text_embeds.astype(jnp.float32)
    image = image / jnp.linalg.norm(image, axis=-1, keepdims=True)
    text = text / jnp.linalg.norm(text, axis=-1, keepdims=True)
    scale = jnp.exp(jnp.minimum(logit_scale.astype(jnp.float32), math.log(max_logit_scale)))
    return scale * image @ text.T


def same_caption(tokens: Array) -> Array:  # tokens: [B, L] -> [B, B] bool
    """Which pairs of the batch carry identical token sequences."""
    return jnp.all(tokens[:, None, :] == tokens[None, :, :], axis=-1)


def _soft_cross_entropy(logits: Array, targets: Array) -> Array:  # [B, B] each -> []
    return -jnp.mean(jnp.sum(targets * jax.nn.log_softmax(logits, axis=-1), axis=-1))


def contrastive_loss(
    image_embeds: Array,  # [B, P]
    text_embeds: Array,  # [B, P]
    logit_scale: Array,  # []
    positives: Array | None = None,  # [B, B] bool, [i, j]: text j describes image i
    max_logit_scale: float = MAX_LOGIT_SCALE,
) -> tuple[Array, dict[str, Array]]:
    """Mean of the image→text and text→image cross-entropies.

    Without `positives` the diagonal pairs are the only matches (plain InfoNCE); with them, each
    row's target spreads evenly over its positives (use `same_caption(tokens)` so duplicate
    captions in a batch are not pushed apart).
    """
    if image_embeds.shape != text_embeds.shape or image_embeds.ndim != 2:
        raise ValueError(
            f"image and text embeddings must both be [B, P], got {image_embeds.shape} and "
            f"{text_embeds.shape}"
        )
    batch = image_embeds.shape[0]
    if positives is None:
        positives = jnp.eye(batch, dtype=bool)
    if positives.shape != (batch, batch):
        raise ValueError(f"positives must be [{batch}, {batch}], got {positives.shape}")
    positives = positives | jnp.eye(batch, dtype=bool)
    logits = clip_logits(image_embeds, text_embeds, logit_scale, max_logit_scale)
    targets = positives.astype(jnp.float32)
    image_to_text = _soft_cross_entropy(logits, targets / targets.sum(-1, keepdims=True))
    targets_t = targets.T
    text_to_image = _soft_cross_entropy(logits.T, targets_t / targets_t.sum(-1, keepdims=True))
    loss = (image_to_text + text_to_image) / 2
    accuracy = jnp.mean(jnp.take_along_axis(positives, jnp.argmax(logits, -1)[:, None], 1))
    return loss, {
        "loss": loss,
        "image_to_text": image_to_text,
        "text_to_image": text_to_image,
        "image_to_text_accuracy": accuracy,
        "temperature": 1.0 / jnp.exp(jnp.minimum(logit_scale, math.log(max_logit_scale))),
    }
