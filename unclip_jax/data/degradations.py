"""Corruptions of the upsamplers' low-resolution conditioning images, jittable and keyed.

All run in JAX, inside the upsampler's jitted training step on the accelerator (not in the
host pipeline), on a batch of high-resolution crops [B, H, W, 3] in [-1, 1], and end at the
low-resolution size [B, h, w, 3]:

- `blur_degrade` (64→256 stage; Ramesh et al. 2022 corrupt the first upsampler's input with
  Gaussian blur): downsample, then Gaussian blur with a random σ per image.
- `bsr_degrade` (256→1024 stage), after Zhang et al. 2021 (BSRGAN): isotropic blur, anisotropic
  blur, a down/up-sampling round trip with random scale and interpolation, Gaussian noise and
  JPEG (DCT quantisation, `jpeg.py`), in an order drawn per image, at the high resolution; then
  a resize to the low resolution with random interpolation and a last JPEG there. Keeping every
  shuffled stage at one resolution keeps the shapes static under `jit`.

Each image draws its own parameters from `jax.random.fold_in(key, stage)` streams of its own key.
"""

import dataclasses

import jax
import jax.numpy as jnp

from unclip_jax.data.jpeg import jpeg_compress

# Interpolations of the random resizes (`jax.image` methods).
RESIZE_METHODS = ("linear", "cubic", "lanczos3", "lanczos5")


def gaussian_kernel(
    sigma_x: jnp.ndarray, sigma_y: jnp.ndarray, theta: jnp.ndarray, radius: int
) -> jnp.ndarray:
    """Normalised 2-D Gaussian [2r+1, 2r+1] with std `sigma_x`, `sigma_y` along axes rotated
    by `theta` (radians); isotropic when the two σ are equal."""
    grid = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
    y, x = jnp.meshgrid(grid, grid, indexing="ij")
    cos, sin = jnp.cos(theta), jnp.sin(theta)
    u, v = cos * x + sin * y, -sin * x + cos * y
    log = -0.5 * ((u / sigma_x) ** 2 + (v / sigma_y) ** 2)
    kernel = jnp.exp(log - log.max())
    return kernel / kernel.sum()


def blur(image: jnp.ndarray, kernel: jnp.ndarray) -> jnp.ndarray:
    """image [H, W, C] convolved per channel with kernel [K, K], reflecting at the borders."""
    r = kernel.shape[0] // 2
    padded = jnp.pad(image, ((r, r), (r, r), (0, 0)), mode="reflect")
    channels = image.shape[-1]
    out = jax.lax.conv_general_dilated(
        padded[None].astype(jnp.float32),
        jnp.tile(kernel[:, :, None, None], (1, 1, 1, channels)),
        window_strides=(1, 1),
        padding="VALID",
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=channels,
    )
    return out[0].astype(image.dtype)


def gaussian_blur(image: jnp.ndarray, sigma: jnp.ndarray, radius: int) -> jnp.ndarray:
    """Isotropic Gaussian blur of image [H, W, C] with std `sigma` pixels."""
    return blur(image, gaussian_kernel(sigma, sigma, jnp.float32(0), radius))


def resize(image: jnp.ndarray, size: tuple[int, int], method: jnp.ndarray) -> jnp.ndarray:
    """image [H, W, C] → [*size, C] with the interpolation RESIZE_METHODS[method] (traced)."""
    shape = (*size, image.shape[-1])
    branches = [
        lambda x, m=m: jax.image.resize(x, shape, m, antialias=True) for m in RESIZE_METHODS
    ]
    return jax.lax.switch(method, branches, image)


def _scale(image: jnp.ndarray, scale: jnp.ndarray, method: str) -> jnp.ndarray:
    return jax.image.scale_and_translate(
        image, image.shape, (0, 1), jnp.stack([scale, scale]), jnp.zeros(2), method
    )


def resample_round_trip(
    image: jnp.ndarray, scale: jnp.ndarray, down: jnp.ndarray, up: jnp.ndarray
) -> jnp.ndarray:
    """Down-sample [H, W, C] by `scale` < 1 and back, with interpolations `down`, `up` (indices
    into RESIZE_METHODS); the small image lives in the top-left of a same-shape buffer, and the
    empty rest is divided out (normalised convolution) so that edges stay unbiased."""
    ones = jnp.ones((*image.shape[:2], 1), image.dtype)

    def leg(x, s, method):
        branches = [lambda x, m=m: _scale(x, s, m) for m in RESIZE_METHODS]
        return jax.lax.switch(method, branches, x)

    small = leg(jnp.concatenate([image, ones], -1), scale, down)
    big = leg(small, 1 / scale, up)
    return big[..., :-1] / jnp.maximum(big[..., -1:], 1e-3)


def blur_degrade(
    key: jax.Array,
    images: jnp.ndarray,
    low_size: int,
    sigma_range: tuple[float, float] = (0.4, 0.6),
) -> jnp.ndarray:
    """images [B, H, W, 3] → low-resolution [B, low, low, 3], blurred with σ ~ U(sigma_range)
    pixels (of the low resolution) per image."""
    lo, hi = sigma_range
    if not 0 < lo <= hi:
        raise ValueError(f"sigma_range must satisfy 0 < low <= high, got {sigma_range}")
    radius = max(1, int(3 * hi + 0.5))
    low = jax.image.resize(images, (images.shape[0], low_size, low_size, 3), "cubic")
    sigmas = jax.random.uniform(key, (images.shape[0],), minval=lo, maxval=hi)
    blurred = jax.vmap(lambda x, s: gaussian_blur(x, s, radius))(low, sigmas)
    return jnp.clip(blurred, -1, 1)


@dataclasses.dataclass(frozen=True)
class BSRConfig:
    """Ranges of the BSR stages; σ and kernel radii in pixels of the high resolution."""

    blur_sigma: tuple[float, float] = (0.2, 3.0)
    blur_radius: int = 10  # kernels are (2 r + 1)²
    resample_scale: tuple[float, float] = (0.5, 0.95)
    noise_std: tuple[float, float] = (1 / 127.5, 25 / 127.5)  # in [-1, 1] units
    gray_noise_probability: float = 0.4
    jpeg_quality: tuple[float, float] = (30.0, 95.0)

    def __post_init__(self):
        for name in ("blur_sigma", "resample_scale", "noise_std", "jpeg_quality"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi:
                raise ValueError(f"{name} must satisfy 0 < low <= high, got {(lo, hi)}")
        if self.resample_scale[1] >= 1:
            raise ValueError(f"resample_scale must stay below 1, got {self.resample_scale}")


def _uniform(key, bounds):
    return jax.random.uniform(key, (), minval=bounds[0], maxval=bounds[1])


def bsr_stages(config: BSRConfig) -> tuple:
    """The shuffled BSR stages, each `(key, image [H, W, 3]) -> image`, in a fixed listing."""

    def isotropic_blur(key, x):
        return gaussian_blur(x, _uniform(key, config.blur_sigma), config.blur_radius)

    def anisotropic_blur(key, x):
        kx, ky, kt = jax.random.split(key, 3)
        kernel = gaussian_kernel(
            _uniform(kx, config.blur_sigma),
            _uniform(ky, config.blur_sigma),
            _uniform(kt, (1e-6, jnp.pi)),
            config.blur_radius,
        )
        return blur(x, kernel)

    def down_up(key, x):
        ks, kd, ku = jax.random.split(key, 3)
        n = len(RESIZE_METHODS)
        down, up = jax.random.randint(kd, (), 0, n), jax.random.randint(ku, (), 0, n)
        return resample_round_trip(x, _uniform(ks, config.resample_scale), down, up)

    def noise(key, x):
        ks, kg, kn = jax.random.split(key, 3)
        std = _uniform(ks, config.noise_std)
        colour = jax.random.normal(kn, x.shape)
        gray = jnp.broadcast_to(colour[..., :1], x.shape)
        gray_noise = jax.random.uniform(kg) < config.gray_noise_probability
        return x + std * jnp.where(gray_noise, gray, colour)

    def jpeg(key, x):
        return jpeg_compress(jnp.clip(x, -1, 1), _uniform(key, config.jpeg_quality))

    return isotropic_blur, anisotropic_blur, down_up, noise, jpeg


def _bsr_one(key: jax.Array, image: jnp.ndarray, low_size: int, config: BSRConfig):
    stages = bsr_stages(config)
    order_key, resize_key, jpeg_key, stage_key = jax.random.split(key, 4)
    order = jax.random.permutation(order_key, len(stages))

    def step(i, x):
        return jax.lax.switch(order[i], stages, jax.random.fold_in(stage_key, i), x)

    x = jax.lax.fori_loop(0, len(stages), step, image.astype(jnp.float32))
    method = jax.random.randint(resize_key, (), 0, len(RESIZE_METHODS))
    x = resize(jnp.clip(x, -1, 1), (low_size, low_size), method)
    x = jpeg_compress(jnp.clip(x, -1, 1), _uniform(jpeg_key, config.jpeg_quality))
    return jnp.clip(x, -1, 1)


def bsr_degrade(
    key: jax.Array, images: jnp.ndarray, low_size: int, config: BSRConfig | None = None
) -> jnp.ndarray:
    """images [B, H, W, 3] in [-1, 1] → BSR-degraded [B, low, low, 3] in [-1, 1]."""
    config = config or BSRConfig()
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be [B, H, W, 3], got shape {images.shape}")
    keys = jax.random.split(key, images.shape[0])
    return jax.vmap(lambda k, x: _bsr_one(k, x, low_size, config))(keys, images)
