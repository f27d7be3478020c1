"""Bicubic resize that reproduces `torch.nn.functional.interpolate(mode="bicubic")`.

diffusers' unCLIP pipeline upsamples the low-res image for the super-resolution U-Nets with
`F.interpolate(mode="bicubic", align_corners=False, antialias=True)`; `jax.image.resize` uses
Keys' cubic with a = -0.5 and another border rule, so it does not match. Both torch kernels are
separable and are built here as small [out, in] matrices (numpy, at trace time) applied per axis:

- antialias=False: cubic convolution with a = -0.75 over 4 taps, border pixels replicated.
- antialias=True: PIL-style filter (cubic with a = -0.5, support stretched by the scale when
  downsampling), weights renormalised over the taps that fall inside the image.
"""

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

_A_PLAIN = -0.75
_A_ANTIALIAS = -0.5


def _cubic(x: np.ndarray, a: float) -> np.ndarray:
    """Keys' cubic convolution kernel, evaluated elementwise at distances `x`."""
    x = np.abs(x)
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    far = (((x - 5.0) * x + 8.0) * x - 4.0) * a
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


def _plain_matrix(in_size: int, out_size: int) -> np.ndarray:
    """[out, in] weights of torch's bicubic (align_corners=False, no antialias)."""
    scale = in_size / out_size
    source = (np.arange(out_size) + 0.5) * scale - 0.5
    floor = np.floor(source)
    frac = source - floor
    matrix = np.zeros((out_size, in_size), np.float64)
    rows = np.arange(out_size)
    for offset in range(-1, 3):
        weight = _cubic(frac - offset, _A_PLAIN)
        index = np.clip(floor.astype(np.int64) + offset, 0, in_size - 1)
        np.add.at(matrix, (rows, index), weight)
    return matrix


def _antialias_matrix(in_size: int, out_size: int) -> np.ndarray:
    """[out, in] weights of torch's bicubic with antialias=True (align_corners=False)."""
    scale = in_size / out_size
    support = 2.0 * max(scale, 1.0)
    inv_scale = 1.0 / scale if scale >= 1.0 else 1.0
    matrix = np.zeros((out_size, in_size), np.float64)
    for i in range(out_size):
        center = scale * (i + 0.5)
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), in_size)
        taps = np.arange(lo, hi)
        weight = _cubic((taps - center + 0.5) * inv_scale, _A_ANTIALIAS)
        total = weight.sum()
        matrix[i, lo:hi] = weight / total if total != 0 else weight
    return matrix


def resize_matrix(in_size: int, out_size: int, antialias: bool) -> np.ndarray:
    """The [out_size, in_size] linear map torch's bicubic applies along one axis."""
    if in_size < 1 or out_size < 1:
        raise ValueError(f"sizes must be positive, got in_size={in_size}, out_size={out_size}")
    build = _antialias_matrix if antialias else _plain_matrix
    return build(in_size, out_size).astype(np.float32)


def bicubic_resize(
    images: Array,  # [B, H, W, C]
    size: tuple[int, int],  # (H_out, W_out)
    antialias: bool = True,
) -> Array:  # [B, H_out, W_out, C]
    """Torch-compatible bicubic resize of NHWC images (align_corners=False); jittable."""
    if images.ndim != 4:
        raise ValueError(f"images must be [B, H, W, C], got shape {images.shape}")
    height, width = images.shape[1:3]
    rows = jnp.asarray(resize_matrix(height, size[0], antialias))
    cols = jnp.asarray(resize_matrix(width, size[1], antialias))
    out = jnp.einsum("oh,bhwc->bowc", rows, images.astype(jnp.float32), precision="highest")
    out = jnp.einsum("pw,bowc->bopc", cols, out, precision="highest")
    return out.astype(images.dtype)


def resize_images(images: Array, size: int) -> Array:
    """[B, S, S, C] → [B, size, size, C]: antialiased bicubic (torch-compatible), clipped."""
    if images.shape[1:3] == (size, size):
        return images.astype(jnp.float32)
    resized = bicubic_resize(images.astype(jnp.float32), (size, size), antialias=True)
    return jnp.clip(resized, -1.0, 1.0)
