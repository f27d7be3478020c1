"""Karlo v1-alpha's full-size 64 px decoder and 64→256 super-resolution U-Nets: the diffusers
configs (keyword arguments of `UNet2DConditionModel` / `UNet2DModel`) and our `UNetConfig`s."""

from unclip_jax.models.unet import UNetConfig

DECODER = dict(
    sample_size=64,
    layers_per_block=3,
    down_block_types=("ResnetDownsampleBlock2D",) + ("SimpleCrossAttnDownBlock2D",) * 3,
    up_block_types=("SimpleCrossAttnUpBlock2D",) * 3 + ("ResnetUpsampleBlock2D",),
    mid_block_type="UNetMidBlock2DSimpleCrossAttn",
    block_out_channels=(320, 640, 960, 1280),
    in_channels=3,
    out_channels=6,
    cross_attention_dim=1536,
    class_embed_type="identity",
    attention_head_dim=64,
    resnet_time_scale_shift="scale_shift",
)
SUPER_RES = dict(
    sample_size=256,
    layers_per_block=3,
    down_block_types=("ResnetDownsampleBlock2D",) * 4,
    up_block_types=("ResnetUpsampleBlock2D",) * 4,
    block_out_channels=(320, 640, 960, 1280),
    in_channels=6,
    out_channels=3,
    add_attention=False,
)

_WIDTHS = dict(base_channels=320, channel_mults=(1, 2, 3, 4), num_res_blocks=3)
DECODER_UNET = UNetConfig(out_channels=6, attention_levels=(1, 2, 3), head_dim=64, **_WIDTHS)
SUPER_RES_UNET = UNetConfig(
    out_channels=3,
    attention_levels=(),
    mid_attention=False,
    scale_shift=False,
    head_dim=8,  # diffusers' default; the super-res U-Net has no attention
    **_WIDTHS,
)
