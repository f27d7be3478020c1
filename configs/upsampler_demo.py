"""The ×4 upsampler at demo scale: 16→64 px on the `large_64px` shapes, a small attention-free
U-Net trained on 16 px crops (¼ of the side) with Gaussian-blur corruption of the 16 px input
(the paper's first stage), run fully convolutionally at 64 px with 15 DDIM steps.

A 1.3M-parameter U-Net. Training budget: 1000 steps of 32 crops (635 steps took 18 minutes on
2 CPU cores shared at load average ~20).

    unclip train --config=configs/upsampler_demo.py --workdir=workdirs/upsampler_demo

`arg="smoke"` shrinks it to one step of a tiny U-Net (the tests' run).
"""

import ml_collections

from configs import base


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = base.get_config()
    config.trainer = "upsampler"
    config.low_res = 16
    config.high_res = 64
    config.crop_fraction = 0.25  # training crops: ¼ of the high-res side
    config.corruption = "gaussian_blur"  # or "bsr" (second stage), "none"
    config.noise_aug_max_level = 0  # > 0 needs model.noise_level_conditioning
    config.data = base.shapes_data()
    config.model = ml_collections.ConfigDict(
        dict(
            # Fields of unclip_jax.models.unet.UNetConfig.
            unet=dict(
                out_channels=3,  # fixed variance
                base_channels=32,
                channel_mults=(1, 2, 2),
                num_res_blocks=1,
                attention_levels=(),
                mid_attention=False,
                dropout=0.0,
                groups=8,
                scale_shift=True,
            ),
            noise_level_conditioning=False,
            antialias=True,
            dtype="float32",
            param_dtype="float32",
        )
    )
    config.diffusion = ml_collections.ConfigDict(
        dict(
            schedule="cosine",
            train_steps=1000,
            sampler="ddim",
            sample_steps=15,  # the paper: 27 (64→256) and 15 (256→1024)
            # v rather than eps: an eps upsampler trained this briefly leaves a speckle on flat
            # areas (edge energy +49% over the ground truth, MSE worse than bicubic); v gives
            # +7% and 0.41x bicubic's MSE
            # (experiments/results/decoder_learning/decoder_learning_upsampler.json).
            prediction="v",
        )
    )
    config.eval = ml_collections.ConfigDict(dict(batch_size=32, num_batches=2))

    base.image_training(config, warmup_steps=50)

    if arg == "smoke":
        config.model.unet.update(base_channels=8, channel_mults=(1, 2), groups=4)
        config.diffusion.sample_steps = 2
        base.shrink_training(config, num_samples=2)
    elif arg:
        raise ValueError(f"upsampler_demo config arg must be '' or 'smoke', got {arg!r}")
    return config
