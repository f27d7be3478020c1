"""Best-of-N reranking by CLIP score: N candidate images per caption, the one whose CLIP image
embedding is closest to the caption's text embedding kept (DALL·E 2021 §2.3, N = 512 there, with
gains flattening after about 32; unCLIP's final images alike).

The pipelines score every candidate inside the compiled program that draws it (`clip_scores`
on the CLIP embeddings of the chunk's images and captions), so scoring is batched with sampling
and a chunk boundary may fall inside a caption's group; `best_rows` then picks, on the host, the
best of each caption's N consecutive rows.

    scores = clip_scores(clip.encode_image(images), text_embed)        # [G·N], in the program
    kept = best_rows(np.asarray(scores), candidates=N)                 # [G] row indices
"""

import jax
import jax.numpy as jnp
import numpy as np

from unclip_jax.models.clip import normalize

Array = jax.Array


def clip_scores(image_embed: Array, text_embed: Array) -> Array:
    """Cosine similarity of matching rows: [B, D], [B, D] → [B]."""
    return jnp.sum(normalize(image_embed) * normalize(text_embed), axis=-1)


def best_rows(scores: np.ndarray, candidates: int) -> np.ndarray:
    """The row of the largest score in each group of `candidates` consecutive rows (the first
    where tied): scores [G·N] → row indices [G] into them."""
    scores = np.asarray(scores)
    if candidates < 1 or scores.ndim != 1 or scores.shape[0] % candidates:
        raise ValueError(
            f"scores must be [G·N] for N = {candidates} candidates, got shape {scores.shape}"
        )
    groups = scores.reshape(-1, candidates)
    return np.arange(groups.shape[0]) * candidates + np.argmax(groups, axis=1)
