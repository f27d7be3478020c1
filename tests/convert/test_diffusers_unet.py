"""Parity with diffusers' unCLIP (Karlo) U-Nets on tiny random models: the decoder
(`UNet2DConditionModel` + `UnCLIPTextProjModel`) and the super-resolution `UNet2DModel`,
same weights in, same numbers out (≤ 1e-4), plus the converter's error messages."""

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel, UNet2DModel
from diffusers.pipelines.deprecated.unclip.text_proj import UnCLIPTextProjModel

sys.path.insert(0, str(Path(__file__).parent))
import karlo_full_size

from unclip_jax.convert.diffusers_unet import (
    decoder_params_from_diffusers,
    upsampler_params_from_diffusers,
)
from unclip_jax.models.unet import Decoder, UNetConfig, Upsampler

B, SIZE, LENGTH, CLIP_DIM, CONTEXT, TOKENS = 2, 16, 6, 20, 24, 4
CHANNELS = (16, 32, 48)


def _randomize(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random values in every tensor (norm scales and the learned null embedding included)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(0.2 * torch.randn(param.shape, generator=generator))
    return module.eval()


def _nchw(x: jax.Array) -> np.ndarray:
    return np.asarray(x).transpose(0, 3, 1, 2)


@pytest.fixture(scope="module")
def karlo_decoder():
    """Karlo's decoder layout at a tiny size (levels 16/8/4 px, attention at 8 and 4 px)."""
    unet = UNet2DConditionModel(
        sample_size=SIZE,
        layers_per_block=2,
        down_block_types=(
            "ResnetDownsampleBlock2D",
            "SimpleCrossAttnDownBlock2D",
            "SimpleCrossAttnDownBlock2D",
        ),
        up_block_types=(
            "SimpleCrossAttnUpBlock2D",
            "SimpleCrossAttnUpBlock2D",
            "ResnetUpsampleBlock2D",
        ),
        mid_block_type="UNetMidBlock2DSimpleCrossAttn",
        block_out_channels=CHANNELS,
        in_channels=3,
        out_channels=6,
        cross_attention_dim=CONTEXT,
        class_embed_type="identity",
        attention_head_dim=8,
        resnet_time_scale_shift="scale_shift",
        norm_num_groups=8,
    )
    text_proj = UnCLIPTextProjModel(
        clip_extra_context_tokens=TOKENS,
        clip_embeddings_dim=CLIP_DIM,
        time_embed_dim=4 * CHANNELS[0],
        cross_attention_dim=CONTEXT,
    )
    unet, text_proj = _randomize(unet, 0), _randomize(text_proj, 1)
    config = UNetConfig(
        out_channels=6,
        base_channels=CHANNELS[0],
        channel_mults=(1, 2, 3),
        num_res_blocks=2,
        attention_levels=(1, 2),
        mid_attention=True,
        head_dim=8,
        groups=8,
        scale_shift=True,
    )
    model = Decoder(config, context_dim=CONTEXT, num_image_tokens=TOKENS, caption_source="clip")
    rng = np.random.default_rng(0)
    inputs = dict(
        x=rng.normal(size=(2 * B, SIZE, SIZE, 3)).astype(np.float32),
        t=np.array([3, 700, 250, 999]),
        image_embed=rng.normal(size=(2 * B, CLIP_DIM)).astype(np.float32),
        caption_embed=rng.normal(size=(2 * B, CLIP_DIM)).astype(np.float32),
        caption_states=rng.normal(size=(2 * B, LENGTH, CLIP_DIM)).astype(np.float32),
        caption_mask=np.arange(LENGTH)[None] < np.array([[6], [3], [4], [1]]),
    )
    expected = jax.eval_shape(
        lambda: model.init(
            jax.random.key(0),
            inputs["x"],
            inputs["t"],
            inputs["image_embed"],
            caption_states=inputs["caption_states"],
            caption_embed=inputs["caption_embed"],
        )
    )["params"]
    params = decoder_params_from_diffusers(unet.state_dict(), text_proj.state_dict(), expected)

    @jax.jit
    def apply(params, inputs, drop_image):
        rest = {k: v for k, v in inputs.items() if k not in ("x", "t", "image_embed")}
        return model.apply(
            {"params": params},
            inputs["x"],
            inputs["t"],
            inputs["image_embed"],
            drop_image=drop_image,
            **rest,
        )

    return unet, text_proj, params, apply, inputs, expected


def _diffusers_decoder(unet, text_proj, inputs, guidance: bool):
    """diffusers' pipeline computation; with `guidance` the first half gets the null embedding."""
    image = torch.from_numpy(inputs["image_embed"])
    image = image[B:] if guidance else image
    with torch.no_grad():
        context, added = text_proj(
            image_embeddings=image,
            prompt_embeds=torch.from_numpy(inputs["caption_embed"]),
            text_encoder_hidden_states=torch.from_numpy(inputs["caption_states"]),
            do_classifier_free_guidance=guidance,
        )
        mask = F.pad(torch.from_numpy(inputs["caption_mask"]), (TOKENS, 0), value=True)
        return unet(
            torch.from_numpy(inputs["x"].transpose(0, 3, 1, 2)),
            torch.from_numpy(inputs["t"]),
            encoder_hidden_states=context,
            class_labels=added,
            attention_mask=mask,
        ).sample.numpy()


def test_decoder_matches_diffusers(karlo_decoder):
    unet, text_proj, params, apply, inputs, _ = karlo_decoder
    expected = _diffusers_decoder(unet, text_proj, inputs, guidance=False)
    out = _nchw(apply(params, inputs, jnp.zeros((2 * B,), bool)))
    assert np.abs(expected).max() > 0.1
    np.testing.assert_allclose(out, expected, atol=1e-4, rtol=0)


def test_dropped_image_matches_diffusers_null_embedding(karlo_decoder):
    unet, text_proj, params, apply, inputs, _ = karlo_decoder
    expected = _diffusers_decoder(unet, text_proj, inputs, guidance=True)
    drop = jnp.asarray([True] * B + [False] * B)
    np.testing.assert_allclose(_nchw(apply(params, inputs, drop)), expected, atol=1e-4, rtol=0)


def test_super_res_matches_diffusers():
    """Karlo's super-resolution layout: Resnet blocks only, additive time embedding."""
    torch_model = UNet2DModel(
        sample_size=32,
        layers_per_block=2,
        down_block_types=("ResnetDownsampleBlock2D",) * 3,
        up_block_types=("ResnetUpsampleBlock2D",) * 3,
        block_out_channels=CHANNELS,
        in_channels=6,
        out_channels=3,
        add_attention=False,
        norm_num_groups=8,
    )
    torch_model = _randomize(torch_model, 2)
    config = UNetConfig(
        out_channels=3,
        base_channels=CHANNELS[0],
        channel_mults=(1, 2, 3),
        num_res_blocks=2,
        attention_levels=(),
        mid_attention=False,
        groups=8,
        scale_shift=False,
    )
    model = Upsampler(config)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(B, 32, 32, 3)).astype(np.float32)
    low = rng.uniform(-1, 1, size=(B, 8, 8, 3)).astype(np.float32)
    t = np.array([5, 800])
    with torch.no_grad():
        upscaled = F.interpolate(
            torch.from_numpy(low.transpose(0, 3, 1, 2)),
            size=[32, 32],
            mode="bicubic",
            align_corners=False,
            antialias=True,
        )
        sample = torch.cat([torch.from_numpy(x.transpose(0, 3, 1, 2)), upscaled], dim=1)
        expected = torch_model(sample, torch.from_numpy(t)).sample.numpy()
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x, low, t))["params"]
    params = upsampler_params_from_diffusers(torch_model.state_dict(), shapes)
    out = jax.jit(lambda p: model.apply({"params": p}, x, low, t))(params)
    assert np.abs(expected).max() > 0.1
    np.testing.assert_allclose(_nchw(out), expected, atol=1e-4, rtol=0)


def test_conversion_errors_name_component_tensor_and_shapes(karlo_decoder):
    unet, text_proj, _, _, _, expected = karlo_decoder
    state = dict(unet.state_dict())
    key = "down_blocks.1.attentions.0.add_k_proj.weight"
    state[key] = torch.zeros(7, 3)
    with pytest.raises(
        ValueError, match=r"decoder: tensor .*add_k_proj.weight.* \(7, 3\).*\(24, 4, 8\)"
    ):
        decoder_params_from_diffusers(state, text_proj.state_dict(), expected)
    del state[key]
    with pytest.raises(ValueError, match=r"decoder: tensor .*add_k_proj.weight.* is missing"):
        decoder_params_from_diffusers(state, text_proj.state_dict(), expected)
    extra = {**text_proj.state_dict(), "unknown.weight": torch.zeros(2)}
    with pytest.raises(ValueError, match=r"text_proj: tensors without a place .*unknown.weight"):
        decoder_params_from_diffusers(unet.state_dict(), extra, expected)


def _shape_only(module: torch.nn.Module) -> dict[str, np.ndarray]:
    """The state dict as zero-stride numpy arrays: shapes without memory."""
    return {
        k: np.broadcast_to(np.float32(0), tuple(v.shape)) for k, v in module.state_dict().items()
    }


def test_karlo_full_size_weights_map_one_to_one():
    """Every tensor of Karlo's 64 px decoder, text projection and 64→256 super-res U-Net finds
    its place, shape for shape (models built on torch's meta device: nothing allocated)."""
    with torch.device("meta"):
        unet = UNet2DConditionModel(**karlo_full_size.DECODER)
        text_proj = UnCLIPTextProjModel(
            time_embed_dim=1280, cross_attention_dim=1536, clip_embeddings_dim=768
        )
        super_res = UNet2DModel(**karlo_full_size.SUPER_RES)
    decoder = Decoder(karlo_full_size.DECODER_UNET, context_dim=1536, caption_source="clip")
    shapes = jax.eval_shape(
        lambda: decoder.init(
            jax.random.key(0),
            jnp.zeros((1, 64, 64, 3)),
            jnp.zeros((1,)),
            jnp.zeros((1, 768)),
            caption_states=jnp.zeros((1, 77, 768)),
            caption_embed=jnp.zeros((1, 768)),
        )
    )["params"]
    params = decoder_params_from_diffusers(_shape_only(unet), _shape_only(text_proj), shapes)
    torch_count = sum(p.numel() for m in (unet, text_proj) for p in m.parameters())
    assert sum(x.size for x in jax.tree.leaves(params)) == torch_count + 768  # + null caption
    upsampler = Upsampler(karlo_full_size.SUPER_RES_UNET)
    shapes = jax.eval_shape(
        lambda: upsampler.init(
            jax.random.key(0),
            jnp.zeros((1, 256, 256, 3)),
            jnp.zeros((1, 64, 64, 3)),
            jnp.zeros((1,)),
        )
    )["params"]
    params = upsampler_params_from_diffusers(_shape_only(super_res), shapes)
    assert sum(x.size for x in jax.tree.leaves(params)) == sum(
        p.numel() for p in super_res.parameters()
    )
