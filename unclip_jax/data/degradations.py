"""Corruptions of the upsamplers' low-resolution conditioning images, jittable and keyed.

All run in JAX, inside the upsampler's jitted training step on the accelerator (not in the
host pipeline), on a batch of high-resolution crops [B, H, W, 3] in [-1, 1], and end at the
low-resolution size [B, h, w, 3]:

- `blur_degrade` (64→256 stage; Ramesh et al. 2022 corrupt the first upsampler's input with
  Gaussian blur): downsample, then Gaussian blur with a random σ per image.
- `bsr_degrade` (256→1024 stage), after Zhang et al. 2021 (BSRGAN): isotropic blur, anisotropic
  blur, a down/up-sampling round trip with random scale and interpolation, Gaussian noise, JPEG
  (DCT quantisation, `jpeg.py`) and, with probability 0.25 (BSRGAN's), processed camera sensor
  noise (`camera_sensor_noise`: reverse ISP to an RGGB raw mosaic, Poisson-Gaussian shot and
  read noise, forward ISP), in an order drawn per image (`bsr_orders`), at the high resolution;
  then BSRGAN's closing steps: a resize to the low resolution with random interpolation and a
  last JPEG there. Keeping every shuffled stage at one resolution keeps the shapes static under
  `jit`. With `BSRConfig.second_order` (Real-ESRGAN, Wang et al. 2021) the shuffled stages run a
  second time with their own ranges (e.g. `REAL_ESRGAN_SECOND_ORDER`) before the closing steps.

Where BSRGAN differs: each of its two blurs picks an isotropic or an anisotropic kernel, its
shuffled JPEG fires 90% of the time, it may halve the image before the shuffle, and its two
downsamplings are shuffled stages (the ×1/s one kept after the random-scale one) rather than a
round trip and a closing resize; the camera noise here leaves out the ISP's colour-correction
matrix (Brooks et al. 2019) for want of camera matrices.

Each image draws its own parameters from `jax.random.fold_in(key, stage)` streams of its own key.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

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


# Brooks et al. 2019 ("Unprocessing Images for Learned Raw Denoising"), the reverse-forward ISP
# that BSRGAN's camera sensor noise follows: white-balance gains and the Poisson-Gaussian noise.
RED_GAIN = (1.9, 2.4)  # uniform
BLUE_GAIN = (1.5, 1.9)  # uniform
BRIGHTNESS = (0.8, 0.1)  # mean, std of the normal whose inverse scales all channels' gains
READ_NOISE_LINE = (2.18, 1.20, 0.26)  # log read = a · log shot + b + N(0, c²)
# Bilinear demosaicing of an RGGB mosaic (per channel, over the channel's sampled sites).
_GREEN_KERNEL = np.array([[0, 1, 0], [1, 4, 1], [0, 1, 0]], np.float32) / 4
_RED_BLUE_KERNEL = np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]], np.float32) / 4


def srgb_to_linear(x: jnp.ndarray) -> jnp.ndarray:
    """Display values in [0, 1] → linear: the inverse of `linear_to_srgb` (inverse smoothstep
    tone curve, then gamma 2.2), Brooks et al. 2019's unprocessing."""
    tone = 0.5 - jnp.sin(jnp.arcsin(1 - 2 * jnp.clip(x, 0, 1)) / 3)
    return jnp.maximum(tone, 1e-8) ** 2.2


def linear_to_srgb(x: jnp.ndarray) -> jnp.ndarray:
    """Linear values in [0, 1] → display values: gamma 1/2.2, then the smoothstep tone curve."""
    g = jnp.maximum(x, 1e-8) ** (1 / 2.2)
    return 3 * g**2 - 2 * g**3


def bayer_masks(height: int, width: int) -> jnp.ndarray:
    """[H, W, 3] one-hot of the channel an RGGB sensor samples at each pixel."""
    y = jnp.arange(height)[:, None] % 2
    x = jnp.arange(width)[None, :] % 2
    channel = jnp.where(y == x, 2 * y, 1)  # R at (even, even), B at (odd, odd), else G
    return jax.nn.one_hot(channel, 3, dtype=jnp.float32)


def demosaic(raw: jnp.ndarray) -> jnp.ndarray:
    """RGGB mosaic [H, W] → [H, W, 3] by bilinear interpolation: sampled values are kept, the
    others averaged from their nearest sites of the channel (reflection keeps the pattern at the
    borders)."""
    sparse = raw[..., None] * bayer_masks(*raw.shape)
    green = blur(sparse[..., 1:2], _GREEN_KERNEL)
    red_blue = blur(sparse[..., ::2], _RED_BLUE_KERNEL)
    return jnp.stack([red_blue[..., 0], green[..., 0], red_blue[..., 1]], axis=-1)


def camera_sensor_noise(
    key: jax.Array,
    image: jnp.ndarray,
    shot: jnp.ndarray,
    read: jnp.ndarray,
    gains: jnp.ndarray,
) -> jnp.ndarray:
    """BSRGAN's processed camera sensor noise (after Brooks et al. 2019) of [H, W, 3] in [-1, 1].

    Reverse ISP: display values → linear (`srgb_to_linear`) → raw by dividing by the white-
    balance `gains` [3] → an RGGB mosaic. Noise on the mosaic: heteroscedastic Gaussian, the
    Poisson-Gaussian model's approximation, of variance `shot` · raw + `read`. Forward ISP:
    bilinear demosaicing, the gains, clipping to [0, 1], `linear_to_srgb`. Without noise the
    image comes back unchanged wherever it is locally linear in the linear domain (away from a
    one-pixel border); elsewhere demosaicing softens it, as a camera's does. The noise is
    signal-dependent in the raw domain (variance shot · raw + read) and spatially correlated
    after demosaicing. Brooks et al. 2019's colour-correction matrix is left out (no camera
    matrices here).
    """
    linear = srgb_to_linear((image.astype(jnp.float32) + 1) / 2)
    raw = jnp.sum(linear / gains * bayer_masks(*image.shape[:2]), axis=-1)  # [H, W]
    noise = jax.random.normal(key, raw.shape)
    noisy = raw + jnp.sqrt(jnp.maximum(shot * raw + read, 0.0)) * noise
    linear = jnp.clip(demosaic(noisy) * gains, 0, 1)
    return (2 * linear_to_srgb(linear) - 1).astype(image.dtype)


def _camera_parameters(key: jax.Array, shot_range: tuple[float, float]):
    """(shot, read, gains [3]) drawn as Brooks et al. 2019 do: shot log-uniform over
    `shot_range`, log read on a line of log shot, red/blue gains over a random brightness."""
    ks, kr, kg, kb, kl = jax.random.split(key, 5)
    log_shot = _uniform(ks, (jnp.log(shot_range[0]), jnp.log(shot_range[1])))
    slope, intercept, spread = READ_NOISE_LINE
    log_read = slope * log_shot + intercept + spread * jax.random.normal(kr)
    brightness = jnp.clip(BRIGHTNESS[0] + BRIGHTNESS[1] * jax.random.normal(kl), 0.5, 1.0)
    gains = jnp.stack([_uniform(kg, RED_GAIN), jnp.float32(1), _uniform(kb, BLUE_GAIN)])
    return jnp.exp(log_shot), jnp.exp(log_read), gains / brightness


@dataclasses.dataclass(frozen=True)
class BSRConfig:
    """Ranges of the BSR stages; σ and kernel radii in pixels of the high resolution.

    `camera_noise_probability` is BSRGAN's chance of the camera-sensor-noise stage (its
    `isp_prob`); `shot_noise` bounds its log-uniform shot-noise variance per unit of raw signal.
    `second_order`: the ranges of a second pass of all the shuffled stages (Real-ESRGAN,
    Wang et al. 2021), or None for BSRGAN's single pass.
    """

    blur_sigma: tuple[float, float] = (0.2, 3.0)
    blur_radius: int = 10  # kernels are (2 r + 1)²
    resample_scale: tuple[float, float] = (0.5, 0.95)
    noise_std: tuple[float, float] = (1 / 127.5, 25 / 127.5)  # in [-1, 1] units
    gray_noise_probability: float = 0.4
    jpeg_quality: tuple[float, float] = (30.0, 95.0)
    camera_noise_probability: float = 0.25
    shot_noise: tuple[float, float] = (1e-4, 1.2e-2)
    second_order: "BSRConfig | None" = None

    def __post_init__(self):
        for name in ("blur_sigma", "resample_scale", "noise_std", "jpeg_quality", "shot_noise"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi:
                raise ValueError(f"{name} must satisfy 0 < low <= high, got {(lo, hi)}")
        if self.resample_scale[1] >= 1:
            raise ValueError(f"resample_scale must stay below 1, got {self.resample_scale}")
        for name in ("gray_noise_probability", "camera_noise_probability"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.second_order is not None and self.second_order.second_order is not None:
            raise ValueError("second_order must not have a second order of its own")

    @property
    def passes(self) -> tuple["BSRConfig", ...]:
        """The configs of the shuffled passes, in order."""
        return (self,) if self.second_order is None else (self, self.second_order)


# Real-ESRGAN's second-order ranges (its x4plus training options), within what the round trip
# allows (a downscale only); no camera noise, as Real-ESRGAN has none.
REAL_ESRGAN_SECOND_ORDER = BSRConfig(
    blur_sigma=(0.2, 1.5),
    resample_scale=(0.3, 0.95),
    noise_std=(1 / 127.5, 25 / 127.5),
    jpeg_quality=(30.0, 95.0),
    camera_noise_probability=0.0,
)


def _uniform(key, bounds):
    return jax.random.uniform(key, (), minval=bounds[0], maxval=bounds[1])


def bsr_stages(config: BSRConfig) -> tuple:
    """The shuffled BSR stages, each `(key, image [H, W, 3]) -> image`, in a fixed listing:
    isotropic blur, anisotropic blur, down/up round trip, Gaussian noise, JPEG, camera noise."""

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

    def camera_noise(key, x):
        kp, kn, ka = jax.random.split(key, 3)
        noisy = camera_sensor_noise(kn, x, *_camera_parameters(kp, config.shot_noise))
        return jnp.where(jax.random.uniform(ka) < config.camera_noise_probability, noisy, x)

    return isotropic_blur, anisotropic_blur, down_up, noise, jpeg, camera_noise


NUM_STAGES = 6  # len(bsr_stages(config))


def apply_in_order(stages: tuple, order: jnp.ndarray, key: jax.Array, image: jnp.ndarray):
    """image [H, W, 3] through `stages[order[0]]`, `stages[order[1]]`, … (order [S], traced);
    the i-th applied stage draws its parameters from `fold_in(key, i)`."""

    def step(i, x):
        return jax.lax.switch(order[i], stages, jax.random.fold_in(key, i), x)

    return jax.lax.fori_loop(0, order.shape[0], step, image.astype(jnp.float32))


def _image_keys(key: jax.Array) -> jax.Array:
    """One image's (order, closing steps, stages) keys [3]."""
    return jax.random.split(key, 3)


def _image_orders(key: jax.Array, passes: int) -> jnp.ndarray:
    """[P, S] stage orders of one image's passes, from its key (`bsr_orders`)."""
    keys = jax.random.split(_image_keys(key)[0], passes)
    return jax.vmap(lambda k: jax.random.permutation(k, NUM_STAGES))(keys)


def resize_and_compress(
    key: jax.Array, image: jnp.ndarray, low_size: int, jpeg_quality: tuple[float, float]
) -> jnp.ndarray:
    """BSRGAN's closing steps: image [H, W, 3] → [low, low, 3] with a random interpolation, then
    JPEG at a quality ~ U(jpeg_quality) there; clipped to [-1, 1]."""
    resize_key, jpeg_key = jax.random.split(key)
    method = jax.random.randint(resize_key, (), 0, len(RESIZE_METHODS))
    x = resize(jnp.clip(image, -1, 1), (low_size, low_size), method)
    quality = _uniform(jpeg_key, jpeg_quality)
    return jnp.clip(jpeg_compress(jnp.clip(x, -1, 1), quality), -1, 1)


def bsr_degrade_image(
    key: jax.Array, image: jnp.ndarray, low_size: int, config: BSRConfig
) -> jnp.ndarray:
    """One image [H, W, 3] in [-1, 1] → [low, low, 3]: the shuffled passes at the high
    resolution, then `resize_and_compress`; `bsr_degrade` maps it over a batch."""
    _, close_key, stage_key = _image_keys(key)
    orders = _image_orders(key, len(config.passes))
    x = image
    for i, pass_config in enumerate(config.passes):
        x = apply_in_order(bsr_stages(pass_config), orders[i], jax.random.fold_in(stage_key, i), x)
        x = jnp.clip(x, -1, 1)
    return resize_and_compress(close_key, x, low_size, config.passes[-1].jpeg_quality)


def bsr_orders(key: jax.Array, batch_size: int, config: BSRConfig | None = None) -> jnp.ndarray:
    """The stage orders [B, P, S] (indices into `bsr_stages`) that `bsr_degrade(key, ...)` uses
    for a batch of `batch_size`: one permutation per image and pass."""
    config = config or BSRConfig()
    keys = jax.random.split(key, batch_size)
    return jax.vmap(lambda k: _image_orders(k, len(config.passes)))(keys)


def bsr_degrade(
    key: jax.Array, images: jnp.ndarray, low_size: int, config: BSRConfig | None = None
) -> jnp.ndarray:
    """images [B, H, W, 3] in [-1, 1] → BSR-degraded [B, low, low, 3] in [-1, 1]."""
    config = config or BSRConfig()
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be [B, H, W, 3], got shape {images.shape}")
    keys = jax.random.split(key, images.shape[0])
    return jax.vmap(lambda k, x: bsr_degrade_image(k, x, low_size, config))(keys, images)
