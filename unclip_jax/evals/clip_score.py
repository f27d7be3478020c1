"""CLIP score: 100 · cos(z_image, z_text) under a CLIP that did not condition the generation.

Scoring with the CLIP whose embeddings drove the prior and decoder would reward images for
matching that model's quirks, so the demo trains a second CLIP from another seed for scoring.
"""

from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from unclip_jax.convert import hf_clip
from unclip_jax.models.clip import CLIP, normalize
from unclip_jax.models.clip_preprocessing import clip_preprocess
from unclip_jax.text import tokenizer as tokenizer_lib

BATCH = 64  # images or captions per encoder call (the last call is padded to it)


class CLIPScorer:
    """`scorer(images, captions) -> [N]` CLIP scores; images uint8 [N, H, W, 3]."""

    def __init__(self, directory: str | Path):
        directory = Path(directory)
        config, variables = hf_clip.load_clip(directory)
        self.model = CLIP(config)
        self.params = variables["params"]
        self.image_size = config.vision.image_size
        self.tokenizer = tokenizer_lib.load_tokenizer(directory / "tokenizer")
        self._images = jax.jit(self._embed_images)
        self._texts = jax.jit(self._embed_texts)

    def _embed_images(self, params, images):
        pixels = clip_preprocess(images, self.image_size)
        z, _ = self.model.apply({"params": params}, pixels, method=CLIP.encode_image)
        return normalize(z.astype(jnp.float32))

    def _embed_texts(self, params, ids, mask):
        z, _ = self.model.apply({"params": params}, ids, mask, method=CLIP.encode_text)
        return normalize(z.astype(jnp.float32))

    @staticmethod
    def _batched(fn, *arrays: np.ndarray) -> np.ndarray:
        count = len(arrays[0])
        out = []
        for start in range(0, count, BATCH):
            chunk = [a[start : start + BATCH] for a in arrays]
            pad = BATCH - len(chunk[0])
            chunk = [np.concatenate([c, np.repeat(c[-1:], pad, axis=0)]) for c in chunk]
            out.append(np.asarray(fn(*chunk))[: BATCH - pad])
        return np.concatenate(out)

    def embed_images(self, images: np.ndarray) -> np.ndarray:
        """uint8 [N, H, W, 3] → unit embeddings [N, D]."""
        images = np.asarray(images)
        if images.ndim != 4 or images.dtype != np.uint8:
            raise ValueError(
                f"images must be uint8 [N, H, W, 3], got {images.dtype} {images.shape}"
            )
        return self._batched(lambda x: self._images(self.params, x), images)

    def embed_texts(self, captions: Sequence[str]) -> np.ndarray:
        """captions → unit embeddings [N, D]."""
        ids, mask = self.tokenizer(list(captions))
        return self._batched(lambda i, m: self._texts(self.params, i, m), ids, mask)

    def __call__(self, images: np.ndarray, captions: Sequence[str]) -> np.ndarray:
        if len(images) != len(captions) or not len(captions):
            raise ValueError(
                f"need as many images as captions (at least one), got {len(images)} and "
                f"{len(captions)}"
            )
        image = self.embed_images(images)
        text = self.embed_texts(captions)
        return 100.0 * np.sum(image * text, axis=-1)
