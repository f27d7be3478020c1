"""The paper-size 64→256 upsampler (Ramesh et al. 2022, §2.1 and Table 3): 700M parameters,
trained with the "upsampler" trainer.

ADM U-Net without attention (320 channels, 3 blocks per level, multipliers 1,2,3,4) on the noisy
256 px image concatenated with the bicubic-upsampled 64 px image; trained on crops of ¼ the side
with Gaussian-blur corruption of the conditioning image, run fully convolutionally at 256 px
(cosine schedule, 27 DDIM steps). Table 3: AdamW lr 1.2e-4, no weight decay, batch 1024, 1M
steps, EMA 0.9999; the warm-up and the cosine decay of the learning rate are this code's
defaults. `configs/upsampler1024_paper.py` builds on `stage_config` and `shrink_for_cpu` here.

Data: an image folder (`folder_captions:<directory>`, stored at 256 px on first use; captions
are not read); the source opener stops at start with a named error while the folder is unset.
A folder source holds one split, so evaluation reads training images.

    unclip train --config=configs/upsampler256_paper.py --workdir=workdirs/upsampler256_paper \
        --config.data.source=folder_captions:/data/pairs

`arg="smoke"`: 8→32 px with a 2-level U-Net on the `large_64px` shapes, batch 8, 10 steps,
for a CPU:

    unclip train --config=configs/upsampler256_paper.py:smoke --workdir=/tmp/upsampler256
"""

import ml_collections

from configs import upsampler_demo


def stage_config() -> ml_collections.ConfigDict:
    """The full-size 64→256 stage: the demo upsampler's sections with the paper's values."""
    config = upsampler_demo.get_config()
    config.low_res = 64
    config.high_res = 256
    config.crop_fraction = 0.25  # training crops: ¼ of the high-res side
    config.corruption = "gaussian_blur"  # of the conditioning image, in training only
    config.noise_aug_max_level = 0
    # Evaluation reads 0.1% of the folder's images, held out by a hash of their path.
    config.data.update(source="folder_captions:", image_size=256, validation_fraction=0.001)
    config.data.eval_split = "validation"
    config.model = ml_collections.ConfigDict(
        dict(
            # Fields of unclip_jax.models.unet.UNetConfig.
            unet=dict(
                out_channels=3,  # eps
                base_channels=320,
                channel_mults=(1, 2, 3, 4),
                num_res_blocks=3,
                attention_levels=(),
                mid_attention=False,
                dropout=0.0,
                groups=32,
                scale_shift=True,
                remat="none",  # or "full", "dots", "dots_no_batch"
            ),
            noise_level_conditioning=False,
            antialias=True,
            dtype="bfloat16",
            param_dtype="float32",
        )
    )
    config.diffusion = ml_collections.ConfigDict(
        dict(schedule="cosine", train_steps=1000, sample_steps=27, sampler="ddim", prediction="eps")
    )
    config.eval = ml_collections.ConfigDict(dict(batch_size=256, num_batches=4))

    # Table 3, 64→256 column.
    config.train.update(total_steps=1_000_000, batch_size=1024, log_every=100)
    config.train.update(eval_every=5000, sample_every=20_000, num_samples=16)
    config.optimizer.update(peak_lr=1.2e-4, warmup_steps=1000, schedule="cosine")
    config.optimizer.update(end_lr_factor=0.0, weight_decay=0.0, b1=0.9, b2=0.999, eps=1.0e-8)
    config.ema.decay = 0.9999
    config.checkpoint.update(every_steps=5000, max_to_keep=3)
    return config


def shrink_for_cpu(config: ml_collections.ConfigDict) -> None:
    """In place: 8→32 px, a 2-level 32-channel U-Net on the built-in shapes, 10 steps of 8."""
    config.low_res, config.high_res = 8, 32
    config.data.update(source="shapes_captions/large_64px", image_size=64, eval_split="test")
    config.model.unet.update(base_channels=32, channel_mults=(1, 2), num_res_blocks=1, groups=8)
    config.model.dtype = "float32"
    config.diffusion.sample_steps = 4
    config.eval.update(batch_size=8, num_batches=1)
    config.train.update(total_steps=10, batch_size=8, log_every=1, eval_every=5)
    config.train.update(sample_every=10, num_samples=4)
    config.optimizer.warmup_steps = 2
    config.ema.decay = 0.99
    config.checkpoint.update(every_steps=10, max_to_keep=1, async_save=False)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = stage_config()
    if arg == "smoke":
        shrink_for_cpu(config)
    elif arg:
        raise ValueError(f"upsampler256_paper config arg must be '' or 'smoke', got {arg!r}")
    return config
