"""The paper-size decoder (Ramesh et al. 2022, §2.1 and Table 3): 3.5B parameters at 64×64.

GLIDE's 64×64 U-Net (512 channels, 3 blocks per level, multipliers 1,2,3,4, attention at 32, 16
and 8 px with 64-channel heads) conditioned on a ViT-H/16 CLIP image embedding, with a GLIDE-style
caption transformer (width 2048, 24 layers, 32 heads, 256 tokens) trained with it. Model section
for `unclip_jax.models.unet.decoder_from_config`; the decoder training task reads `diffusion`,
`guidance` and `optim`. `arg="runlocal"` shrinks the model for a quick local run.

    unclip train --config=configs/decoder_paper.py --workdir=workdirs/decoder_paper
"""

import ml_collections

from configs import base


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = base.get_config()
    config.trainer = ""  # the decoder training task registers itself here
    config.image_size = 64
    config.image_embed_dim = 1024  # ViT-H/16
    config.model = ml_collections.ConfigDict(
        dict(
            # Fields of unclip_jax.models.unet.UNetConfig.
            unet=dict(
                out_channels=6,  # eps and the variance interpolation (learned variance)
                base_channels=512,
                channel_mults=(1, 2, 3, 4),
                num_res_blocks=3,
                attention_levels=(1, 2, 3),  # 32, 16 and 8 px
                mid_attention=True,
                head_dim=64,
                dropout=0.1,
                groups=32,
                scale_shift=True,
            ),
            context_dim=2048,  # width of the attention tokens (4 image tokens + caption)
            num_image_tokens=4,
            caption_source="transformer",  # or "clip" (Karlo), "none"
            # Fields of unclip_jax.models.caption_transformer.CaptionTransformerConfig.
            caption_transformer=dict(
                vocab_size=50257, max_length=256, width=2048, layers=24, heads=32
            ),
            dtype="bfloat16",
            param_dtype="float32",
        )
    )
    config.diffusion = ml_collections.ConfigDict(
        dict(
            schedule="cosine",
            train_steps=1000,
            sample_steps=250,
            prediction="eps",
            learned_variance=True,  # hybrid loss
        )
    )
    # Classifier-free guidance: the training task drops each condition with these probabilities.
    config.guidance = ml_collections.ConfigDict(dict(image_drop_prob=0.1, caption_drop_prob=0.5))
    # Table 3, decoder column.
    config.optim = ml_collections.ConfigDict(
        dict(
            learning_rate=1.2e-4,
            weight_decay=0.0,
            b1=0.9,
            b2=0.999,
            eps=1.0e-8,
            batch_size=2048,
            train_steps=800_000,
            ema_decay=0.9999,
        )
    )
    if arg == "runlocal":
        config.image_size = 16
        config.image_embed_dim = 32
        config.model.unet.update(
            base_channels=32,
            channel_mults=(1, 2),
            num_res_blocks=1,
            attention_levels=(1,),
            head_dim=16,
            groups=8,
        )
        config.model.update(context_dim=32, dtype="float32")
        config.model.caption_transformer.update(
            vocab_size=256, max_length=16, width=32, layers=2, heads=2
        )
        config.optim.update(batch_size=8, train_steps=10)
    elif arg:
        raise ValueError(f"decoder_paper config arg must be '' or 'runlocal', got {arg!r}")
    return config
