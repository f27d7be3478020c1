"""A local diffusers `UnCLIPPipeline` directory (Karlo) -> a `KarloCheckpoint` of our modules.

    checkpoint = convert_karlo("karlo-v1-alpha/")        # every stage, configs checked
    save_karlo(checkpoint, "karlo-jax/")                  # our checkpoint directory
    checkpoint = load_karlo("karlo-jax/")                 # (both in `karlo_checkpoint`)

Components read (each `config.json` + weights, `*.safetensors` (sharded or not) or `*.bin`):
prior (`PriorTransformer` -> `DiffusionPrior` + mean/std `EmbeddingNormalizer`), text_proj +
decoder (`UnCLIPTextProjModel` + `UNet2DConditionModel` -> `Decoder(caption_source="clip")`),
super_res_first / super_res_last (`UNet2DModel` -> `Upsampler`; Karlo runs the first for all but
the last super-resolution step), text_encoder (`CLIPTextModelWithProjection` -> `TextTransformer`),
tokenizer, and the three `UnCLIPScheduler` configs (-> `KarloScheduler`). Karlo's sampling defaults
(prior 25 steps, guidance 4; decoder 25 steps, guidance 8; super-res 7 steps) are stored with them.
Every error names the component, and the tensor where one is missing or of the wrong shape.
"""

import pathlib
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from flax import traverse_util

from unclip_jax.convert import hf_clip
from unclip_jax.convert.diffusers_files import read_weights, weight_files
from unclip_jax.convert.diffusers_prior import convert_prior_state_dict, prior_from_diffusers_config
from unclip_jax.convert.diffusers_unet import (
    decoder_params_from_diffusers,
    upsampler_params_from_diffusers,
)
from unclip_jax.convert.karlo_checkpoint import (
    KarloCheckpoint,
    Params,
    decoder_shapes,
    shape_dict,
    text_encoder_shapes,
    upsampler_shapes,
)
from unclip_jax.diffusion.karlo import KarloScheduler
from unclip_jax.models.clip import CLIPConfig, TextTransformer
from unclip_jax.models.prior import DiffusionPrior, EmbeddingNormalizer
from unclip_jax.models.unet import Decoder, UNetConfig, Upsampler
from unclip_jax.storage.json_files import read_json

MODELS = ("prior", "text_proj", "decoder", "super_res_first", "super_res_last", "text_encoder")
SCHEDULERS = ("prior_scheduler", "decoder_scheduler", "super_res_scheduler")
COMPONENTS = (*MODELS, "tokenizer", *SCHEDULERS)
_UNET_BLOCKS = {"down": "ResnetDownsampleBlock2D", "up": "ResnetUpsampleBlock2D"}
_ATTN_BLOCKS = {"down": "SimpleCrossAttnDownBlock2D", "up": "SimpleCrossAttnUpBlock2D"}
# U-Net config fields our U-Net reproduces only at these values (diffusers' defaults, Karlo's).
_UNET_FIXED = {
    "act_fn": "silu",
    "center_input_sample": False,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "downsample_padding": 1,
    "mid_block_scale_factor": 1,
    "time_embedding_type": "positional",
    "conv_in_kernel": 3,
    "conv_out_kernel": 3,
    "resnet_out_scale_factor": 1.0,
    "only_cross_attention": False,
    "dual_cross_attention": False,
    "addition_embed_type": None,
    "encoder_hid_dim": None,
    "time_embedding_dim": None,
    "timestep_post_act": None,
    "time_cond_proj_dim": None,
    "num_class_embeds": None,
}

Weights = Callable[[str], dict[str, np.ndarray]]  # component -> its state dict, read on call


def _check_fixed(config: Mapping[str, Any], fixed: Mapping[str, Any], component: str) -> None:
    for key, value in fixed.items():
        if config.get(key, value) != value:
            raise ValueError(f"{component}: config {key} must be {value!r}, got {config[key]!r}")


def _attention_levels(config: Mapping[str, Any], component: str, attention: bool) -> list[int]:
    """Levels whose down block attends; the up blocks must mirror the down blocks."""
    down, up = list(config["down_block_types"]), list(config["up_block_types"])
    levels = []
    for level, name in enumerate(down):
        if name not in (_UNET_BLOCKS["down"], _ATTN_BLOCKS["down"] if attention else None):
            raise ValueError(f"{component}: down block {level} type {name!r} is not supported")
        kind = "attn" if name == _ATTN_BLOCKS["down"] else "plain"
        mirror = _ATTN_BLOCKS["up"] if kind == "attn" else _UNET_BLOCKS["up"]
        if len(up) != len(down) or up[len(down) - 1 - level] != mirror:
            raise ValueError(
                f"{component}: up_block_types {up} must mirror down_block_types {down}"
            )
        levels += [level] if kind == "attn" else []
    return levels


def unet_config_from_diffusers(
    config: Mapping[str, Any], component: str, attention: bool
) -> UNetConfig:
    """Our `UNetConfig` from a Karlo-layout `UNet2DConditionModel` / `UNet2DModel` config."""
    _check_fixed(config, _UNET_FIXED, component)
    class_embed = config.get("class_embed_type")
    if class_embed not in ((None, "identity") if attention else (None,)):
        raise ValueError(f"{component}: class_embed_type {class_embed!r} is not supported")
    channels = list(config["block_out_channels"])
    base = channels[0]
    if any(c % base for c in channels):
        raise ValueError(f"{component}: block_out_channels {channels} must be multiples of {base}")
    levels = _attention_levels(config, component, attention)
    mid = config.get("mid_block_type", "UNetMidBlock2DSimpleCrossAttn" if attention else None)
    mid_attention = mid == "UNetMidBlock2DSimpleCrossAttn"
    if not attention and config.get("add_attention", True):
        raise ValueError(f"{component}: add_attention must be False (Karlo's super-res U-Net)")
    if attention and not mid_attention:
        raise ValueError(f"{component}: mid_block_type {mid!r} is not supported")
    head_dim = config.get("attention_head_dim") or 8
    return UNetConfig(
        out_channels=int(config["out_channels"]),
        base_channels=base,
        channel_mults=tuple(c // base for c in channels),
        num_res_blocks=int(config["layers_per_block"]),
        attention_levels=tuple(levels),
        mid_attention=mid_attention,
        head_dim=int(head_dim if isinstance(head_dim, int) else head_dim[0]),
        groups=int(config.get("norm_num_groups", 32)),
        norm_eps=float(config.get("norm_eps", 1e-5)),
        scale_shift=config.get("resnet_time_scale_shift", "default") == "scale_shift",
    )


def _text_config(config: Mapping[str, Any]) -> CLIPConfig:
    """CLIPTextModelWithProjection's config.json -> CLIPConfig (vision tower unused)."""
    if config.get("model_type", "clip_text_model") != "clip_text_model":
        raise ValueError(
            f"text_encoder: expected a CLIPTextModelWithProjection config, "
            f"got model_type {config['model_type']!r}"
        )
    return hf_clip.config_from_hf(
        {
            "model_type": "clip",
            "text_config": dict(config),
            "projection_dim": config["projection_dim"],
        }
    )


def text_encoder_params(model: TextTransformer, state: Mapping[str, np.ndarray]) -> Params:
    """`TextTransformer` params from a `CLIPTextModelWithProjection` state dict."""
    clip_config = CLIPConfig(text=model.config, projection_dim=model.projection_dim)
    rows = [
        (ours.removeprefix("text/"), theirs, transform, heads)
        for ours, theirs, transform, heads in hf_clip.parameter_map(clip_config)
        if ours.startswith("text/")
    ]
    expected = shape_dict(text_encoder_shapes(model))
    flat = _named("text_encoder", lambda: hf_clip.map_state_dict(rows, state, expected))
    return traverse_util.unflatten_dict(flat, sep="/")


def _named(component: str, convert: Callable[[], Any]) -> Any:
    """Run `convert`, prefixing the component's name to any ValueError it raises."""
    try:
        return convert()
    except ValueError as error:
        message = str(error)
        if message.startswith(f"{component}:"):
            raise
        raise ValueError(f"{component}: {message}") from error


def _check_channels(
    config: Mapping[str, Any], scheduler: KarloScheduler, component: str, in_channels: int
) -> None:
    """Input channels as the pipeline feeds them; 2× output channels with learned variance."""
    if int(config["in_channels"]) != in_channels:
        raise ValueError(
            f"{component}: in_channels must be {in_channels}, got {config['in_channels']}"
        )
    image = 3 if component == "decoder" else in_channels // 2
    want = 2 * image if scheduler.var_type == "learned_range" else image
    if int(config["out_channels"]) != want:
        raise ValueError(
            f"{component}: out_channels must be {want} with {scheduler.var_type!r} variance, "
            f"got {config['out_channels']}"
        )


def _check_components(root: pathlib.Path) -> None:
    """`root` is a directory whose model_index.json and subdirectories hold every component."""
    if not root.is_dir():
        raise FileNotFoundError(f"diffusers UnCLIP directory {str(root)!r} does not exist")
    index = read_json(root / "model_index.json", "model_index")
    for component in COMPONENTS:
        if component not in index or not (root / component).is_dir():
            raise FileNotFoundError(
                f"{component}: component missing from {root} (an UnCLIPPipeline has {COMPONENTS})"
            )


def _read_schedulers(root: pathlib.Path) -> dict[str, KarloScheduler]:
    """The prior's, decoder's and super-resolution's samplers, keyed without "_scheduler"."""
    return {
        c.removesuffix("_scheduler"): _named(
            c,
            lambda c=c: KarloScheduler.from_diffusers(
                read_json(root / c / "scheduler_config.json", c)
            ),
        )
        for c in SCHEDULERS
    }


def _check_unet_channels(
    configs: Mapping[str, Mapping[str, Any]], schedulers: Mapping[str, KarloScheduler]
) -> None:
    """The decoder's and both super-resolution U-Nets' channels, against their samplers."""
    _check_channels(configs["decoder"], schedulers["decoder"], "decoder", in_channels=3)
    for component in ("super_res_first", "super_res_last"):
        out = int(configs[component]["out_channels"])
        _check_channels(configs[component], schedulers["super_res"], component, 2 * out)


def _convert_prior(
    config: Mapping[str, Any], weights: Weights
) -> tuple[DiffusionPrior, Params, EmbeddingNormalizer]:
    """`PriorTransformer` -> `DiffusionPrior`, its parameters and its embedding normalizer."""
    prior = _named("prior", lambda: prior_from_diffusers_config(config))
    params, normalizer = _named("prior", lambda: convert_prior_state_dict(weights("prior"), prior))
    return prior, params, normalizer


def _convert_text_encoder(
    config: Mapping[str, Any], weights: Weights
) -> tuple[TextTransformer, Params]:
    """`CLIPTextModelWithProjection` -> `TextTransformer` and its parameters."""
    text_config = _named("text_encoder", lambda: _text_config(config))
    text_encoder = TextTransformer(text_config.text, text_config.projection_dim)
    return text_encoder, text_encoder_params(text_encoder, weights("text_encoder"))


def _convert_decoder(
    config: Mapping[str, Any], text_proj_config: Mapping[str, Any], weights: Weights
) -> tuple[Decoder, Params, int]:
    """`UNet2DConditionModel` + `UnCLIPTextProjModel` -> `Decoder`, parameters, output side."""
    decoder = Decoder(
        _named("decoder", lambda: unet_config_from_diffusers(config, "decoder", True)),
        context_dim=int(config["cross_attention_dim"]),
        num_image_tokens=int(text_proj_config.get("clip_extra_context_tokens", 4)),
        caption_source="clip",
    )
    clip_dim = int(text_proj_config.get("clip_embeddings_dim", 768))
    size = int(config["sample_size"])
    params = decoder_params_from_diffusers(
        weights("decoder"),
        weights("text_proj"),
        decoder_shapes(decoder, clip_dim, size),
    )
    return decoder, params, size


def _convert_super_res(
    first: Mapping[str, Any], last: Mapping[str, Any], weights: Weights
) -> tuple[Upsampler, dict[str, Params], int]:
    """Both `UNet2DModel`s -> one `Upsampler`, the two parameter sets, the output side."""
    unet = _named(
        "super_res_first", lambda: unet_config_from_diffusers(first, "super_res_first", False)
    )
    last_unet = _named(
        "super_res_last",
        lambda: unet_config_from_diffusers(last, "super_res_last", False),
    )
    if last_unet != unet:
        raise ValueError(
            f"super_res_last: architecture {last_unet} differs from super_res_first's {unet}"
        )
    super_res = Upsampler(unet)
    size = int(first["sample_size"])
    shapes = upsampler_shapes(super_res, int(first["out_channels"]), size)
    params = {
        c: _named(c, lambda c=c: upsampler_params_from_diffusers(weights(c), shapes))
        for c in ("super_res_first", "super_res_last")
    }
    return super_res, params, size


def convert_karlo(diffusers_dir: str | pathlib.Path) -> KarloCheckpoint:
    """Read and convert every component of a diffusers UnCLIPPipeline directory."""
    root = pathlib.Path(diffusers_dir)
    _check_components(root)
    configs = {c: read_json(root / c / "config.json", c) for c in MODELS}
    schedulers = _read_schedulers(root)
    for component in MODELS:  # fail before reading gigabytes if any component has none
        weight_files(root / component, component)

    def weights(component: str) -> dict[str, np.ndarray]:  # read when converted: lower peak
        return read_weights(root / component, component)

    prior, prior_params, normalizer = _convert_prior(configs["prior"], weights)
    text_encoder, text_params = _convert_text_encoder(configs["text_encoder"], weights)
    _check_unet_channels(configs, schedulers)
    decoder, decoder_params, decoder_size = _convert_decoder(
        configs["decoder"], configs["text_proj"], weights
    )
    super_res, super_res_params, super_res_size = _convert_super_res(
        configs["super_res_first"], configs["super_res_last"], weights
    )
    return KarloCheckpoint(
        text_encoder=text_encoder,
        prior=prior,
        decoder=decoder,
        super_res=super_res,
        params={
            "text_encoder": text_params,
            "prior": prior_params,
            "decoder": decoder_params,
            **super_res_params,
        },
        normalizer=normalizer,
        schedulers=schedulers,
        decoder_size=decoder_size,
        super_res_size=super_res_size,
        tokenizer_dir=root / "tokenizer",
    )
