"""The decoder at demo scale: a 2.1M-parameter U-Net at 16×16 inverting a small CLIP's image
embeddings of one large shape (the `large_64px` shapes: 62% or 78% of the side), for a CPU.

16 px keeps shape learnable in minutes (at 32 px a 1M-parameter U-Net learned colour in ~10 min
of CPU training but shape far more slowly); the 16→64 upsampler (`configs/upsampler_demo.py`)
brings samples to the oracle's 64 px. v-prediction with the hybrid loss of a learned variance,
EMA 0.995 with a warm-up (decay min(0.995, (1 + t) / (10 + t))), guidance scale 3 at sampling.
Training budget: 1000 steps of 32 images (`experiments/decoder_learning.py` caps it at 14
minutes). Conditioned on the image embedding alone (caption_source "none"); the paper's
("transformer") and Karlo's ("clip") caption sources run from the same config by setting
`model.caption_source` (and `model.caption_transformer`).

    unclip train --config=configs/decoder_demo.py --workdir=workdirs/decoder_demo \
        --config.clip_dir=workdirs/clip_demo/clip

`arg="smoke"` shrinks it to one step of a tiny U-Net (the tests' run).
"""

import ml_collections

from configs import base


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = base.get_config()
    config.trainer = "decoder"
    config.clip_dir = ""  # a CLIP checkpoint (the CLIP task's <workdir>/clip)
    config.image_size = 16  # the decoder's resolution
    # At 64 px: the resolution the CLIP embeddings are computed from.
    config.data = base.shapes_data()
    config.model = ml_collections.ConfigDict(
        dict(
            # Fields of unclip_jax.models.unet.UNetConfig.
            unet=dict(
                out_channels=6,  # mean and variance interpolation (learned variance)
                base_channels=32,
                channel_mults=(1, 2, 2),
                num_res_blocks=2,
                attention_levels=(2,),  # 4 px
                mid_attention=True,
                head_dim=32,
                dropout=0.0,
                groups=8,
                scale_shift=True,
            ),
            context_dim=128,
            num_image_tokens=4,
            caption_source="none",  # or "transformer", "clip"
            dtype="float32",
            param_dtype="float32",
        )
    )
    config.diffusion = ml_collections.ConfigDict(
        dict(
            schedule="cosine",
            train_steps=1000,
            sampler="ddim",  # the paper's decoder: "ddpm" with 250 steps
            sample_steps=50,
            prediction="v",  # or "eps", "x0"
            learned_variance=True,  # hybrid loss
        )
    )
    config.guidance = ml_collections.ConfigDict(
        dict(image_drop_prob=0.1, caption_drop_prob=0.5, scale=3.0)
    )
    config.eval = ml_collections.ConfigDict(dict(batch_size=32, num_batches=2))

    base.image_training(config, warmup_steps=100)

    if arg == "smoke":
        config.model.unet.update(
            base_channels=16, channel_mults=(1, 2), num_res_blocks=1, attention_levels=(1,)
        )
        config.model.unet.update(head_dim=16, groups=8)
        config.model.context_dim = 16
        config.diffusion.sample_steps = 2
        base.shrink_training(config, num_samples=4)
    elif arg:
        raise ValueError(f"decoder_demo config arg must be '' or 'smoke', got {arg!r}")
    return config
