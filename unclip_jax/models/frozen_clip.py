"""A trained CLIP used only to encode: conditioning for the decoder and the prior, embeddings for
the pipeline, the data's embedding shards and the CLIP score. No gradient flows into it; the
methods are pure and the parameters are the pytree's leaves (the model is static), so callers jit
them with the parameters as arguments, `jax.jit(FrozenCLIP.encode_text)(clip, ids, mask)`, or call
them inside their own programs."""

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from unclip_jax.models.clip import CLIP
from unclip_jax.models.clip_preprocessing import clip_preprocess

Array = jax.Array


@struct.dataclass
class FrozenCLIP:
    model: CLIP = struct.field(pytree_node=False)
    params: Any = None  # the unboxed `params` collection

    @property
    def embed_dim(self) -> int:
        return self.model.config.projection_dim

    def encode_image(self, images: Array) -> Array:
        """images: [B, H, W, 3], uint8 or float in [-1, 1] → z_i [B, P] float32."""
        pixels = clip_preprocess(images, self.model.config.vision.image_size)
        z, _ = self.model.apply({"params": self.params}, pixels, method=CLIP.encode_image)
        return jax.lax.stop_gradient(z.astype(jnp.float32))

    def encode_text(self, ids: Array, mask: Array) -> tuple[Array, Array]:
        """ids, mask: [B, L] → (z_t [B, P], token states [B, L, Dt]), float32."""
        z, aux = self.model.apply({"params": self.params}, ids, mask, method=CLIP.encode_text)
        states = aux["hidden_states"].astype(jnp.float32)
        return jax.lax.stop_gradient(z.astype(jnp.float32)), jax.lax.stop_gradient(states)
