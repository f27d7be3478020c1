"""How the decoder sees the CLIP image embedding and the caption (unCLIP §2.1).

"We modify the architecture described in Nichol et al. (2021) by projecting and adding CLIP
embeddings to the existing timestep embedding, and by projecting CLIP embeddings into four extra
tokens of context that are concatenated to the sequence of outputs from the GLIDE text encoder."

Classifier-free guidance drops the image embedding (10%) and the caption (50%) in training: a
dropped image embedding is replaced by the learned `null_image_embed`; a dropped caption's pooled
embedding by the learned `null_caption_embed` and its tokens are masked out of attention.
The layout is that of diffusers' `UnCLIPTextProjModel` (Karlo), so its weights port exactly.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from unclip_jax.nn.linear import dense
from unclip_jax.nn.norm import layer_norm
from unclip_jax.nn.precision import PrecisionModule
from unclip_jax.sharding import EMBED, LENGTH, MLP, TOKENS, constrain

Array = jax.Array


def substitute(drop: Array | None, null: Array, value: Array) -> Array:
    """`null` (broadcast) where `drop` [B] is True, `value` [B, D] elsewhere."""
    if drop is None:
        return value
    return jnp.where(drop[:, None], null[None].astype(value.dtype), value)


class DecoderConditioning(PrecisionModule):
    """Image embedding + caption -> (added time embedding, attention tokens, their mask).

    Parameters: `image_to_time`, `caption_to_time` (added to the timestep embedding),
    `image_to_tokens` (kernel [D_img, T, D_ctx]: the T extra tokens), `caption_proj` and
    `caption_norm` (caption states to the token width), `null_image_embed`, `null_caption_embed`.
    """

    time_embed_dim: int
    context_dim: int
    num_image_tokens: int = 4

    @nn.compact
    def __call__(
        self,
        image_embed: Array,  # [B, D_img]
        caption_embed: Array | None = None,  # [B, D_cap], pooled caption encoding
        caption_states: Array | None = None,  # [B, L, D_cap]
        caption_mask: Array | None = None,  # [B, L] bool, False at padding
        drop_image: Array | None = None,  # [B] bool
        drop_caption: Array | None = None,  # [B] bool
    ) -> tuple[Array, Array, Array]:  # [B, E], [B, T + L, D_ctx], [B, T + L] bool
        batch = image_embed.shape[0]
        null_image = self._null("null_image_embed", image_embed.shape[-1])
        image_embed = substitute(drop_image, null_image, image_embed)
        added = dense(self.time_embed_dim, (EMBED, MLP), name="image_to_time", **self.dtypes)(
            image_embed
        )
        tokens = dense(
            (self.num_image_tokens, self.context_dim),
            (EMBED, LENGTH, MLP),
            name="image_to_tokens",
            **self.dtypes,
        )(image_embed)  # kernel [D_img, T, D_ctx]
        mask = jnp.ones((batch, self.num_image_tokens), bool)
        if caption_embed is not None:
            null_caption = self._null("null_caption_embed", caption_embed.shape[-1])
            caption_embed = substitute(drop_caption, null_caption, caption_embed)
            added = added + dense(
                self.time_embed_dim, (EMBED, MLP), name="caption_to_time", **self.dtypes
            )(caption_embed)
        if caption_states is not None:
            states = dense(self.context_dim, (EMBED, MLP), name="caption_proj", **self.dtypes)(
                caption_states
            )
            states = layer_norm(name="caption_norm", **self.dtypes)(states)
            tokens = jnp.concatenate([tokens, states.astype(tokens.dtype)], axis=1)
            if caption_mask is None:
                caption_mask = jnp.ones(caption_states.shape[:2], bool)
            if drop_caption is not None:
                caption_mask = caption_mask & ~drop_caption[:, None]
            mask = jnp.concatenate([mask, caption_mask], axis=1)
        # Constrained like transformer states. Without it, XLA's partitioner (jax 0.10, CPU)
        # computes a wrong gradient for `image_to_tokens` when its kernel and the attention's
        # `extra_value` kernels are both sharded over fsdp × tensor.
        return added, constrain(tokens, TOKENS), mask

    def _null(self, name: str, dim: int) -> Array:
        """A learned null embedding [dim] (zeros at init) that stands for a dropped input."""
        init = nn.with_logical_partitioning(nn.initializers.zeros_init(), (EMBED,))
        return self.param(name, init, (dim,), self.param_dtype)
