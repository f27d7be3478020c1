"""diffusers unCLIP (Karlo) U-Net weights -> parameter trees of `unclip_jax.models.unet`.

- `UNet2DConditionModel` in Karlo's decoder layout (ResnetDownsampleBlock2D /
  SimpleCrossAttnDownBlock2D, UNetMidBlock2DSimpleCrossAttn, SimpleCrossAttnUpBlock2D /
  ResnetUpsampleBlock2D) + `UnCLIPTextProjModel` -> `Decoder(caption_source="clip")`.
- `UNet2DModel` in Karlo's super-resolution layout (Resnet blocks only) -> `Upsampler`.

The conversion walks the expected parameter tree (e.g. `jax.eval_shape(model.init, ...)`), finds
each leaf's tensor by name, and fails naming the component, the tensor and both shapes when a
tensor is missing, left over or of the wrong shape. Karlo has no null caption (its unconditional
caption is CLIP's encoding of the empty caption), so `null_caption_embed` is set to zeros.
"""

import re
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import numpy as np
from flax import traverse_util

Params = dict[str, Any]

# Our sub-module names -> diffusers' (inside a residual or attention block).
_BLOCK_NAMES = {
    "emb_proj": "time_emb_proj",
    "skip": "conv_shortcut",
    "norm": "group_norm",
    "attention": None,  # our MultiHeadAttention sits inside the block; diffusers' does not nest
    "query": "to_q",
    "key": "to_k",
    "value": "to_v",
    "extra_key": "add_k_proj",
    "extra_value": "add_v_proj",
    "out": "to_out.0",
}

_TOP_NAMES = {"time_embed": "time_embedding", "norm_out": "conv_norm_out"}

_TEXT_PROJ_NAMES = {
    "null_image_embed": "learned_classifier_free_guidance_embeddings",
    "caption_to_time": "embedding_proj",
    "image_to_time": "clip_image_embeddings_project_to_time_embeddings",
    "image_to_tokens": "clip_extra_context_tokens_proj",
    "caption_proj": "encoder_hidden_states_proj",
    "caption_norm": "text_encoder_hidden_states_norm",
}


def _numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().cpu().float().numpy()
    return np.asarray(value, np.float32)


def _unet_block_prefix(name: str, levels: int) -> str:
    """Our top-level U-Net module name -> diffusers' module path."""
    if name in _TOP_NAMES:
        return _TOP_NAMES[name]
    patterns: list[tuple[str, Callable[..., str]]] = [
        (r"down_(\d+)_(\d+)", lambda lv, i: f"down_blocks.{lv}.resnets.{i}"),
        (r"down_(\d+)_(\d+)_attn", lambda lv, i: f"down_blocks.{lv}.attentions.{i}"),
        (r"down_(\d+)_downsample", lambda lv: f"down_blocks.{lv}.downsamplers.0"),
        (r"mid_(\d+)", lambda i: f"mid_block.resnets.{i}"),
        (r"mid_attn", lambda: "mid_block.attentions.0"),
        (r"up_(\d+)_(\d+)", lambda lv, i: f"up_blocks.{levels - 1 - int(lv)}.resnets.{i}"),
        (r"up_(\d+)_(\d+)_attn", lambda lv, i: f"up_blocks.{levels - 1 - int(lv)}.attentions.{i}"),
        (r"up_(\d+)_upsample", lambda lv: f"up_blocks.{levels - 1 - int(lv)}.upsamplers.0"),
    ]
    for pattern, build in patterns:
        match = re.fullmatch(pattern, name)
        if match:
            return build(*match.groups())
    return name


def _leaf_tensor(leaf: str) -> str:
    """Our leaf name -> diffusers' parameter name."""
    return {"kernel": "weight", "scale": "weight", "bias": "bias"}.get(leaf, leaf)


def _convert_leaf(
    source: np.ndarray, target: tuple[int, ...], leaf: str, tokens: bool
) -> np.ndarray:
    """Rearrange one torch tensor into our layout, or raise ValueError if it cannot fit."""
    if source.size != int(np.prod(target)):
        raise ValueError(f"shape {source.shape} does not fit {target}")
    if leaf == "kernel" and source.ndim == 4:  # conv [O, I, kh, kw] -> [kh, kw, I, O]
        out = source.transpose(2, 3, 1, 0)
    elif tokens and leaf == "kernel":  # [D_ctx·T, D_img], row c·T + k -> [D_img, T, D_ctx]
        d_img, count, d_ctx = target
        out = source.T.reshape(d_img, d_ctx, count).transpose(0, 2, 1)
        out = out if source.shape == (d_ctx * count, d_img) else source
    elif tokens:  # bias [D_ctx·T] -> [T, D_ctx]
        count, d_ctx = target
        out = source.reshape(d_ctx, count).T
    elif leaf == "kernel" and source.ndim == 2:  # linear [out, in] -> [in, out], heads split
        out = source.T
        if out.shape[0] == target[0] or out.shape[-1] == target[-1]:
            out = out.reshape(target)
    else:
        out = source.reshape(target)
    if out.shape != target:
        raise ValueError(f"shape {source.shape} does not fit {target}")
    return out


def _convert(
    component: str,
    state: Mapping[str, Any],
    expected: Params,
    prefix_of: Callable[[tuple[str, ...]], str],
    zeros: tuple[str, ...] = (),
) -> Params:
    flat = traverse_util.flatten_dict(nn.meta.unbox(expected))
    used: set[str] = set()
    out = {}
    for path, want in flat.items():
        shape = tuple(want.shape)
        if path[-1] in zeros:
            out[path] = np.zeros(shape, np.float32)
            continue
        module = prefix_of(path[:-1])
        key = f"{module}.{_leaf_tensor(path[-1])}" if module else prefix_of(path)
        ours = "/".join(path)
        if key not in state:
            raise ValueError(f"{component}: tensor {key!r} for {ours} {shape} is missing")
        source = _numpy(state[key])
        try:
            out[path] = _convert_leaf(source, shape, path[-1], "image_to_tokens" in path)
        except ValueError as err:
            raise ValueError(
                f"{component}: tensor {key!r} of shape {tuple(source.shape)} does not fit "
                f"{ours} of shape {shape}"
            ) from err
        used.add(key)
    unused = sorted(set(state) - used)
    if unused:
        raise ValueError(f"{component}: tensors without a place in the model: {unused}")
    return traverse_util.unflatten_dict(out)


def unet_params_from_diffusers(
    state: Mapping[str, Any], expected: Params, component: str = "unet"
) -> Params:
    """`UNet2DConditionModel` / `UNet2DModel` state dict -> `UNet` params (shaped as `expected`)."""
    levels = len([k for k in expected if re.fullmatch(r"down_\d+_0", k)])

    def prefix_of(path: tuple[str, ...]) -> str:
        parts = [_unet_block_prefix(path[0], levels)] if path else []
        parts += [_BLOCK_NAMES.get(p, p) for p in path[1:]]
        return ".".join(p for p in parts if p)

    return _convert(component, state, expected, prefix_of)


def text_proj_params_from_diffusers(state: Mapping[str, Any], expected: Params) -> Params:
    """`UnCLIPTextProjModel` state dict -> `DecoderConditioning` params."""

    def prefix_of(path: tuple[str, ...]) -> str:
        return ".".join(_TEXT_PROJ_NAMES.get(p, p) for p in path)

    return _convert("text_proj", state, expected, prefix_of, zeros=("null_caption_embed",))


def decoder_params_from_diffusers(
    unet_state: Mapping[str, Any], text_proj_state: Mapping[str, Any], expected: Params
) -> Params:
    """Karlo's decoder + text projection -> `Decoder(caption_source="clip")` params."""
    expected = nn.meta.unbox(expected)
    missing = sorted({"unet", "conditioning"} - set(expected))
    if missing:
        raise ValueError(f"decoder: expected params lack {missing}; is caption_source 'clip'?")
    extra = sorted(set(expected) - {"unet", "conditioning"})
    if extra:
        raise ValueError(f"decoder: diffusers' decoder has no counterpart for {extra}")
    return {
        "unet": unet_params_from_diffusers(unet_state, expected["unet"], "decoder"),
        "conditioning": text_proj_params_from_diffusers(text_proj_state, expected["conditioning"]),
    }


def upsampler_params_from_diffusers(state: Mapping[str, Any], expected: Params) -> Params:
    """Karlo's super-resolution `UNet2DModel` -> `Upsampler` params."""
    expected = nn.meta.unbox(expected)
    extra = sorted(set(expected) - {"unet"})
    if extra:
        raise ValueError(f"super_res: diffusers' UNet2DModel has no counterpart for {extra}")
    return {"unet": unet_params_from_diffusers(state, expected["unet"], "super_res")}
