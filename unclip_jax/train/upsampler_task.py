"""Training the upsamplers (Ramesh et al. 2022, §2.1): p(x_high | x_low), eps loss on crops.

Each step resizes the batch's images to the high resolution, corrupts a low-res copy (Gaussian
blur for the first stage, BSR degradation for the second: "we corrupt the conditioning images
slightly during training ... we use gaussian blur for the first upsampling stage, and a more
diverse BSR degradation for the second"), optionally noises it (noise augmentation, with the level
given to the model), upsamples it bicubically to the high resolution and takes the same random
crop (`crop_size`, ¼ of the side in the paper) of both. The model is fully convolutional, so it
runs on full-size images at sampling time (`sampling.decoder.UpsamplerChain`).

Batches: `image` float [B, S, S, 3] in [-1, 1] (resized to `high_res` when S differs).

    unclip train --config=configs/upsampler_demo.py --workdir=workdirs/upsampler_demo
"""

import os
from collections.abc import Callable, Iterable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from unclip_jax.data import degradations
from unclip_jax.data.image_batches import first_rows, held_out_batches, image_batches
from unclip_jax.diffusion import gaussian
from unclip_jax.diffusion.schedules import Schedule, make_schedule
from unclip_jax.models.unet import Upsampler, upsampler_from_config
from unclip_jax.nn.resize import bicubic_resize, resize_images
from unclip_jax.sampling.decoder import UpsamplerChain
from unclip_jax.sampling.settings import DiffusionSettings
from unclip_jax.train import denoising, loop
from unclip_jax.train.state import TrainState
from unclip_jax.train.task import Batch, Metrics, Params, Task

Array = jax.Array


def downsample(key: Array, images: Array, low_size: int) -> Array:
    """Uncorrupted low-res images: antialiased bicubic (torch-compatible), clipped to [-1, 1]."""
    del key
    return resize_images(images, low_size)


# name -> corrupt(key, images [B, H, W, 3], low_size) -> [B, low, low, 3]
CORRUPTIONS: dict[str, Callable[[Array, Array, int], Array]] = {
    "gaussian_blur": degradations.blur_degrade,  # 64→256 stage
    "bsr": degradations.bsr_degrade,  # 256→1024 stage
    "none": downsample,
}


def random_crops(key: Array, images: tuple[Array, ...], size: int) -> tuple[Array, ...]:
    """The same random `size`² window (one per example) of each [B, H, W, C] array."""
    batch, height, width = images[0].shape[:3]
    top_key, left_key = jax.random.split(key)
    top = jax.random.randint(top_key, (batch,), 0, height - size + 1)
    left = jax.random.randint(left_key, (batch,), 0, width - size + 1)

    def crop(image, y, x):
        return jax.lax.dynamic_slice(image, (y, x, 0), (size, size, image.shape[-1]))

    return tuple(jax.vmap(crop)(image, top, left) for image in images)


class UpsamplerTask(Task):
    """Diffusion loss of an `Upsampler` on crops of (high-res, corrupted upsampled low-res)
    pairs; sample grids upsample fixed held-out low-res images (`sample_low_res` [N, h, h, 3])
    at full size."""

    def __init__(
        self,
        model: Upsampler,
        schedule: Schedule,
        *,
        high_res: int,
        low_res: int,
        crop_size: int,
        corruption: str = "gaussian_blur",  # a key of CORRUPTIONS
        mean_type: str = "eps",  # or "x0", "v"
        noise_aug_max_level: int = 0,  # largest training timestep of the noise augmentation
        sampler: UpsamplerChain | None = None,
        sample_low_res: np.ndarray | None = None,
        sample_steps: int | str = 27,
    ):
        if corruption not in CORRUPTIONS:
            raise ValueError(f"corruption must be one of {sorted(CORRUPTIONS)}, got {corruption!r}")
        if not 0 < low_res < high_res:
            raise ValueError(f"need 0 < low_res < high_res, got {low_res} and {high_res}")
        if not 0 < crop_size <= high_res:
            raise ValueError(f"crop_size must be in [1, {high_res}], got {crop_size}")
        gaussian.check_prediction(mean_type)
        if model.unet.out_channels not in (3, 6):
            raise ValueError(
                f"upsampler output channels must be 3 or 6, got {model.unet.out_channels}"
            )
        if (noise_aug_max_level > 0) != model.noise_level_conditioning:
            raise ValueError(
                "noise augmentation (noise_aug_max_level > 0) needs an upsampler conditioned on "
                f"the noise level and vice versa; got noise_aug_max_level={noise_aug_max_level}, "
                f"noise_level_conditioning={model.noise_level_conditioning}"
            )
        self.model = model
        self.schedule = schedule
        self.high_res = high_res
        self.low_res = low_res
        self.crop_size = crop_size
        self.corruption = corruption
        self.mean_type = mean_type
        self.var_type = "learned_range" if model.unet.out_channels == 6 else "fixed_small"
        self.noise_aug_max_level = noise_aug_max_level
        self.sampler = sampler
        self.sample_low_res = sample_low_res
        self.sample_steps = sample_steps

    def init(self, key: Array, batch_spec: dict[str, jax.ShapeDtypeStruct]) -> Params:
        del batch_spec
        x = jnp.zeros((1, self.crop_size, self.crop_size, 3), jnp.float32)
        t = jnp.zeros((1,), jnp.int32)
        return self.model.init(key, x, x, t, t if self.noise_aug_max_level else None)["params"]

    def conditioning(self, key: Array, high: Array) -> tuple[Array, Array | None]:
        """(corrupted low-res [B, h, h, 3], noise-augmentation level [B] or None)."""
        corrupt_key, level_key, noise_key = jax.random.split(key, 3)
        low = CORRUPTIONS[self.corruption](corrupt_key, high, self.low_res)
        if not self.noise_aug_max_level:
            return low, None
        level = jax.random.randint(level_key, (high.shape[0],), 0, self.noise_aug_max_level + 1)
        noise = jax.random.normal(noise_key, low.shape, jnp.float32)
        return gaussian.q_sample(self.schedule, low, level, noise), level

    def loss(self, params: Params, batch: Batch, key: Array, train: bool) -> tuple[Array, Metrics]:
        high = resize_images(batch["image"], self.high_res)  # [B, H, H, 3]
        cond_key, crop_key, noise_key, dropout_key = jax.random.split(key, 4)
        low, level = self.conditioning(cond_key, high)
        upsampled = bicubic_resize(low, high.shape[1:3], antialias=True)  # [B, H, H, 3]
        x0, cond = random_crops(crop_key, (high, upsampled), self.crop_size)
        options = denoising.dropout(train, dropout_key)

        def denoise(x_t: Array, t: Array) -> Array:
            return self.model.apply({"params": params}, x_t, cond, t, level, **options)

        return denoising.image_loss(
            self.schedule, noise_key, x0, denoise, self.mean_type, self.var_type
        )

    def sample(self, params: Params, key: Array, num: int) -> Array | None:
        if self.sampler is None or self.sample_low_res is None:
            return None
        low = jnp.asarray(self.sample_low_res[:num], jnp.float32)
        level = self.noise_aug_max_level // 2 if self.noise_aug_max_level else None
        return self.sampler(
            params, low, key, size=self.high_res, steps=self.sample_steps, noise_level=level
        )

    @property
    def generates_images(self) -> bool:
        return self.sampler is not None and self.sample_low_res is not None


def build_task(
    config: ml_collections.ConfigDict, sample_low_res: np.ndarray | None = None
) -> UpsamplerTask:
    """The task of an upsampler config (`model`, `low_res`, `high_res`, `crop_fraction`,
    `corruption`, `noise_aug_max_level`, `diffusion`)."""
    diffusion = config.diffusion
    model = upsampler_from_config(config.model)
    return UpsamplerTask(
        model,
        make_schedule(diffusion.schedule, diffusion.train_steps),
        high_res=config.high_res,
        low_res=config.low_res,
        crop_size=round(config.crop_fraction * config.high_res),
        corruption=config.corruption,
        mean_type=diffusion.prediction,
        noise_aug_max_level=config.get("noise_aug_max_level", 0),
        sampler=UpsamplerChain(model, DiffusionSettings.from_dict(diffusion)),
        sample_low_res=sample_low_res,
        sample_steps=diffusion.sample_steps,
    )


def run(
    config: ml_collections.ConfigDict,
    workdir: str | os.PathLike,
    train_source: Sequence,
    eval_source: Sequence,
    hooks: Sequence[loop.Hook] = (),
) -> TrainState:
    """Trains the upsampler on `train_source`; evaluates on the first `config.eval.num_batches`
    batches of `eval_source`, whose downsampled images also make the sample grids."""
    image_size = config.data.image_size
    held_out = held_out_batches(
        eval_source,
        batch_size=config.eval.batch_size,
        count=config.eval.num_batches,
        image_size=image_size,
        seed=config.seed,
    )
    images = first_rows(held_out, "image", config.train.num_samples)
    low = np.asarray(resize_images(jnp.asarray(images), config.low_res))
    task = build_task(config, low)
    train_data = image_batches(
        train_source,
        batch_size=config.train.batch_size // jax.process_count(),
        image_size=image_size,
        seed=config.seed,
    )
    eval_data: Callable[[], Iterable[Batch]] = lambda: iter(held_out)
    return loop.train_and_evaluate(config, workdir, task, train_data, eval_data, hooks)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
    """`unclip train` entry point (trainer "upsampler")."""
    from unclip_jax.data.sources import open_train_and_eval

    train_source, eval_source = open_train_and_eval(config.data)
    return run(config, workdir, train_source, eval_source)
