"""CLIP score: 100 · cos(z_image, z_text) under a CLIP that did not condition the generation.

Scoring with the CLIP whose embeddings drove the prior and decoder would reward images for
matching that model's quirks, so the demo trains a second CLIP from another seed for scoring.
"""

import os
from collections.abc import Sequence

import jax
import numpy as np
from etils import epath

from unclip_jax.convert import hf_clip
from unclip_jax.data.batching import map_padded
from unclip_jax.models.clip import normalize
from unclip_jax.storage.tokenizers import load_tokenizer

BATCH = 64  # images or captions per encoder call (the last call is padded to it)


class CLIPScorer:
    """`scorer(images, captions) -> [N]` CLIP scores; images uint8 [N, H, W, 3]."""

    def __init__(self, directory: str | os.PathLike):
        directory = epath.Path(directory)
        clip = hf_clip.load_frozen_clip(directory)
        self.tokenizer = load_tokenizer(directory / hf_clip.TOKENIZER_DIR)
        images = jax.jit(lambda c, x: normalize(c.encode_image(x)))
        texts = jax.jit(lambda c, ids, mask: normalize(c.encode_text(ids, mask)[0]))
        self._images = lambda x: images(clip, x)
        self._texts = lambda ids, mask: texts(clip, ids, mask)

    def embed_images(self, images: np.ndarray) -> np.ndarray:
        """uint8 [N, H, W, 3] → unit embeddings [N, D]."""
        images = np.asarray(images)
        if images.ndim != 4 or images.dtype != np.uint8:
            raise ValueError(
                f"images must be uint8 [N, H, W, 3], got {images.dtype} {images.shape}"
            )
        return map_padded(self._images, images, batch_size=BATCH)

    def embed_texts(self, captions: Sequence[str]) -> np.ndarray:
        """captions → unit embeddings [N, D]."""
        ids, mask = self.tokenizer(list(captions))
        return map_padded(self._texts, ids, mask, batch_size=BATCH)

    def __call__(self, images: np.ndarray, captions: Sequence[str]) -> np.ndarray:
        if len(images) != len(captions) or not len(captions):
            raise ValueError(
                f"need as many images as captions (at least one), got {len(images)} and "
                f"{len(captions)}"
            )
        image = self.embed_images(images)
        text = self.embed_texts(captions)
        return 100.0 * np.sum(image * text, axis=-1)
