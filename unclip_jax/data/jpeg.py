"""JPEG compression in JAX: colour transform, 4:2:0 chroma subsampling, 8×8 DCT quantisation.

Jittable, with a traced quality, so that it runs inside the upsampler's training step on the
accelerator as one stage of the BSR degradation (`degradations.py`). Quantisation tables and
their scaling by quality follow ITU-T T.81 Annex K and the IJG libjpeg convention.
"""

import jax
import jax.numpy as jnp
import numpy as np

_LUMA_TABLE = np.array(
    [
        [16, 11, 10, 16, 24, 40, 51, 61],
        [12, 12, 14, 19, 26, 58, 60, 55],
        [14, 13, 16, 24, 40, 57, 69, 56],
        [14, 17, 22, 29, 51, 87, 80, 62],
        [18, 22, 37, 56, 68, 109, 103, 77],
        [24, 35, 55, 64, 81, 104, 113, 92],
        [49, 64, 78, 87, 103, 121, 120, 101],
        [72, 92, 95, 98, 112, 100, 103, 99],
    ],
    dtype=np.float32,
)
_CHROMA_TABLE = np.full((8, 8), 99, dtype=np.float32)
_CHROMA_TABLE[:4, :4] = [[17, 18, 24, 47], [18, 21, 26, 66], [24, 26, 56, 99], [47, 66, 99, 99]]


def _dct_matrix() -> np.ndarray:
    """Orthonormal DCT-II basis D [8, 8]: coefficients = D @ block @ D.T."""
    k, n = np.meshgrid(np.arange(8), np.arange(8), indexing="ij")
    d = np.cos((2 * n + 1) * k * np.pi / 16) * np.sqrt(2 / 8)
    d[0] /= np.sqrt(2)
    return d.astype(np.float32)


_DCT = _dct_matrix()
_RGB_TO_YCBCR = np.array(
    [[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]],
    dtype=np.float32,
)
_YCBCR_TO_RGB = np.linalg.inv(_RGB_TO_YCBCR).astype(np.float32)


def quality_table(table: np.ndarray, quality: jnp.ndarray) -> jnp.ndarray:
    """libjpeg's scaling of a base table by quality in [1, 100]."""
    quality = jnp.clip(quality, 1, 100)
    scale = jnp.where(quality < 50, 5000.0 / quality, 200.0 - 2.0 * quality)
    return jnp.clip(jnp.floor((table * scale + 50) / 100), 1, 255)


def _quantise_plane(plane: jnp.ndarray, table: jnp.ndarray) -> jnp.ndarray:
    """plane [H, W] (H, W multiples of 8, centred on 0) → DCT-quantised plane [H, W]."""
    h, w = plane.shape
    blocks = plane.reshape(h // 8, 8, w // 8, 8).transpose(0, 2, 1, 3)
    coefficients = jnp.einsum("ij,abjk,lk->abil", _DCT, blocks, _DCT)
    coefficients = jnp.round(coefficients / table) * table
    blocks = jnp.einsum("ji,abjk,kl->abil", _DCT, coefficients, _DCT)
    return blocks.transpose(0, 2, 1, 3).reshape(h, w)


def jpeg_compress(image: jnp.ndarray, quality: jnp.ndarray) -> jnp.ndarray:
    """image [H, W, 3] in [-1, 1], quality scalar in [1, 100] → decoded JPEG [H, W, 3].

    The image is edge-padded to a multiple of 16; chroma is averaged over 2×2 pixels and
    restored by linear interpolation (libjpeg's "fancy upsampling").
    """
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"image must be [H, W, 3], got shape {image.shape}")
    h, w, _ = image.shape
    ph, pw = -h % 16, -w % 16
    x = jnp.pad((image.astype(jnp.float32) + 1) * 127.5, ((0, ph), (0, pw), (0, 0)), mode="edge")
    ycc = x @ _RGB_TO_YCBCR.T
    luma = _quantise_plane(ycc[..., 0] - 128, quality_table(_LUMA_TABLE, quality)) + 128
    hh, ww = x.shape[:2]
    chroma = ycc[..., 1:].reshape(hh // 2, 2, ww // 2, 2, 2).mean(axis=(1, 3))
    chroma_table = quality_table(_CHROMA_TABLE, quality)
    chroma = jnp.stack([_quantise_plane(chroma[..., c], chroma_table) for c in range(2)], -1)
    chroma = jax.image.resize(chroma, (hh, ww, 2), "linear")
    rgb = jnp.concatenate([luma[..., None], chroma], axis=-1) @ _YCBCR_TO_RGB.T
    rgb = jnp.clip(jnp.round(rgb), 0, 255)[:h, :w]
    return (rgb / 127.5 - 1).astype(image.dtype)
