"""The paper-size 64→256 upsampler (Ramesh et al. 2022, §2.1 and Table 3): 700M parameters.

ADM U-Net without attention (320 channels, 3 blocks per level, multipliers 1,2,3,4) on the noisy
256 px image concatenated with the bicubic-upsampled 64 px image; trained on crops of ¼ the side
with Gaussian-blur corruption of the conditioning image, run fully convolutionally at 256 px.
Model section for `unclip_jax.models.unet.upsampler_from_config`; the upsampler training task
reads `diffusion`, `corruption` and `optim`. `arg="runlocal"` shrinks the model.

    unclip train --config=configs/upsampler256_paper.py --workdir=workdirs/upsampler256_paper
"""

import ml_collections

from configs import base


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = base.get_config()
    config.trainer = ""  # the upsampler training task registers itself here
    config.low_res = 64
    config.high_res = 256
    config.crop_fraction = 0.25  # training crops: ¼ of the high-res side
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
            ),
            noise_level_conditioning=False,
            antialias=True,
            dtype="bfloat16",
            param_dtype="float32",
        )
    )
    config.corruption = "gaussian_blur"  # of the conditioning image, in training only
    config.diffusion = ml_collections.ConfigDict(
        dict(schedule="cosine", train_steps=1000, sample_steps=27, sampler="ddim", prediction="eps")
    )
    # Table 3, 64→256 column.
    config.optim = ml_collections.ConfigDict(
        dict(
            learning_rate=1.2e-4,
            weight_decay=0.0,
            b1=0.9,
            b2=0.999,
            eps=1.0e-8,
            batch_size=1024,
            train_steps=1_000_000,
            ema_decay=0.9999,
        )
    )
    if arg == "runlocal":
        config.low_res, config.high_res = 8, 32
        config.model.unet.update(base_channels=32, channel_mults=(1, 2), num_res_blocks=1, groups=8)
        config.model.dtype = "float32"
        config.optim.update(batch_size=8, train_steps=10)
    elif arg:
        raise ValueError(f"upsampler256_paper config arg must be '' or 'runlocal', got {arg!r}")
    return config
