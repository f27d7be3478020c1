"""CLIP's image preprocessing in JAX: resize the shortest side (bicubic, antialiased), centre crop,
normalise with CLIP's mean and standard deviation. Jittable and batched; the output sizes follow
from the input shape at trace time.

Matches Hugging Face's `CLIPImageProcessor` (its size arithmetic and PIL's antialiased bicubic).
"""

import jax
import jax.numpy as jnp
import numpy as np

from unclip_jax.nn.resize import bicubic_resize

Array = jax.Array

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def shortest_side_size(height: int, width: int, size: int) -> tuple[int, int]:
    """(H', W') with min(H', W') = size and the aspect ratio kept (rounded down, as HF does)."""
    if height <= width:
        return size, int(size * width / height)
    return int(size * height / width), size


def clip_preprocess(
    images: Array,  # [B, H, W, 3], uint8 in [0, 255] or float in [-1, 1]
    image_size: int,
    mean: tuple[float, ...] = CLIP_MEAN,
    std: tuple[float, ...] = CLIP_STD,
) -> Array:  # [B, image_size, image_size, 3] float32, normalised
    """Images as CLIP's image tower expects them."""
    if images.ndim != 4:
        raise ValueError(f"images must be [B, H, W, C] (NHWC), got shape {tuple(images.shape)}")
    if images.shape[-1] != len(mean):
        raise ValueError(
            f"images must have {len(mean)} channels (RGB, NHWC), got {images.shape[-1]} "
            f"in shape {tuple(images.shape)}"
        )
    if image_size < 1:
        raise ValueError(f"image_size must be positive, got {image_size}")
    if images.dtype == jnp.uint8:
        pixels = images.astype(jnp.float32) / 255.0
    elif jnp.issubdtype(images.dtype, jnp.floating):
        pixels = (images.astype(jnp.float32) + 1.0) / 2.0
    else:
        raise ValueError(f"images must be uint8 or floating point, got dtype {images.dtype}")
    height, width = images.shape[1:3]
    new_h, new_w = shortest_side_size(height, width, image_size)
    if (new_h, new_w) != (height, width):
        # Clamped like the 8-bit image the reference resizes.
        pixels = jnp.clip(bicubic_resize(pixels, (new_h, new_w), antialias=True), 0.0, 1.0)
    top, left = (new_h - image_size) // 2, (new_w - image_size) // 2
    pixels = pixels[:, top : top + image_size, left : left + image_size]
    mean_ = jnp.asarray(np.asarray(mean, np.float32))
    std_ = jnp.asarray(np.asarray(std, np.float32))
    return (pixels - mean_) / std_
