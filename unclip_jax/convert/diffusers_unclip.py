"""A local diffusers `UnCLIPPipeline` directory (Karlo) -> unclip_jax configs and parameters.

    checkpoint = convert_karlo("karlo-v1-alpha/")        # every stage, configs checked
    save_karlo(checkpoint, "karlo-jax/")                  # our checkpoint directory
    checkpoint = load_karlo("karlo-jax/")

Components read (each `config.json` + weights, `*.safetensors` (sharded or not) or `*.bin`):
prior (`PriorTransformer` -> `DiffusionPrior` + mean/std `EmbeddingNormalizer`), text_proj +
decoder (`UnCLIPTextProjModel` + `UNet2DConditionModel` -> `Decoder(caption_source="clip")`),
super_res_first / super_res_last (`UNet2DModel` -> `Upsampler`; Karlo runs the first for all but
the last super-resolution step), text_encoder (`CLIPTextModelWithProjection` -> `TextTransformer`),
tokenizer, and the three `UnCLIPScheduler` configs (-> `KarloScheduler`). Karlo's sampling defaults
(prior 25 steps, guidance 4; decoder 25 steps, guidance 8; super-res 7 steps) are stored with them.
Every error names the component, and the tensor where one is missing or of the wrong shape.
"""

import dataclasses
import json
import pathlib
import shutil
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from unclip_jax.convert import hf_clip
from unclip_jax.convert.diffusers_prior import convert_prior_state_dict, prior_from_diffusers_config
from unclip_jax.convert.diffusers_unet import (
    decoder_params_from_diffusers,
    upsampler_params_from_diffusers,
)
from unclip_jax.diffusion.karlo import KarloScheduler
from unclip_jax.models.clip import CLIPConfig, TextConfig, TextTransformer
from unclip_jax.models.prior import DiffusionPrior, EmbeddingNormalizer
from unclip_jax.models.unet import Decoder, UNetConfig, Upsampler

Params = dict[str, Any]

MODELS = ("prior", "text_proj", "decoder", "super_res_first", "super_res_last", "text_encoder")
SCHEDULERS = ("prior_scheduler", "decoder_scheduler", "super_res_scheduler")
COMPONENTS = (*MODELS, "tokenizer", *SCHEDULERS)
# The sampling settings of diffusers' UnCLIPPipeline.__call__ (Karlo's).
KARLO_SAMPLING = {
    "prior": {"steps": 25, "guidance_scale": 4.0},
    "decoder": {"steps": 25, "guidance_scale": 8.0},
    "super_res": {"steps": 7},
}
CONFIG_FILE = "unclip_karlo.json"
_WEIGHT_NAMES = ("diffusion_pytorch_model", "model", "pytorch_model")
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


@dataclasses.dataclass
class KarloCheckpoint:
    """Every stage of an imported Karlo unCLIP: modules, parameters, samplers' settings."""

    text_encoder: TextTransformer
    prior: DiffusionPrior
    decoder: Decoder
    super_res: Upsampler  # one architecture; two parameter sets
    params: dict[str, Params]  # text_encoder, prior, decoder, super_res_first, super_res_last
    normalizer: EmbeddingNormalizer  # the prior's clip_mean / clip_std
    schedulers: dict[str, KarloScheduler]  # prior, decoder, super_res
    decoder_size: int  # decoder output side (px)
    super_res_size: int  # super-resolution output side (px)
    sampling: dict[str, dict[str, float]] = dataclasses.field(
        default_factory=lambda: json.loads(json.dumps(KARLO_SAMPLING))
    )
    tokenizer_dir: pathlib.Path | None = None  # the Hugging Face tokenizer files


def _read_json(path: pathlib.Path, component: str) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"{component}: {path} is missing")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{component}: {path} is not valid JSON: {error}") from None


def _load_tensors(path: pathlib.Path, component: str) -> dict[str, np.ndarray]:
    if path.suffix == ".bin":
        try:
            import torch
        except ImportError:
            raise ValueError(
                f"{component}: {path} is a PyTorch file and torch is not installed"
            ) from None
        state = torch.load(path, map_location="cpu", weights_only=True)
        return {k: v.detach().float().numpy() for k, v in state.items()}
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="flax") as f:
            return {k: np.asarray(f.get_tensor(k), np.float32) for k in f.keys()}  # noqa: SIM118
    except (SafetensorError, OSError) as error:
        raise ValueError(
            f"{component}: {path} is not a readable safetensors file: {error}"
        ) from None


def weight_files(directory: pathlib.Path, component: str) -> list[pathlib.Path]:
    """The weight file(s) of one component directory: safetensors (sharded or not) or .bin."""
    for stem in _WEIGHT_NAMES:
        index = directory / f"{stem}.safetensors.index.json"
        if index.is_file():
            shards = sorted(set(_read_json(index, component)["weight_map"].values()))
            return [directory / shard for shard in shards]
        for suffix in (".safetensors", ".bin"):
            if (directory / f"{stem}{suffix}").is_file():
                return [directory / f"{stem}{suffix}"]
    raise FileNotFoundError(
        f"{component}: no weights in {directory} (expected diffusion_pytorch_model.safetensors, "
        "model.safetensors, a sharded .safetensors index or a .bin file)"
    )


def read_weights(directory: pathlib.Path, component: str) -> dict[str, np.ndarray]:
    """All tensors of one component directory as float32 numpy arrays."""
    state = {}
    for path in weight_files(directory, component):
        state.update(_load_tensors(path, component))
    return state


def _check_fixed(config: Mapping[str, Any], fixed: Mapping[str, Any], component: str) -> None:
    for key, value in fixed.items():
        if config.get(key, value) != value:
            raise ValueError(f"{component}: config {key} must be {value!r}, got {config[key]!r}")


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


def _text_shapes(model: TextTransformer) -> Params:
    ids = jnp.zeros((1, model.config.context_length), jnp.int32)
    return jax.eval_shape(model.init, jax.random.key(0), ids)["params"]


def _shape_dict(tree: Params) -> dict[str, tuple[int, ...]]:
    return {
        k: tuple(v.shape)
        for k, v in traverse_util.flatten_dict(nn.meta.unbox(tree), sep="/").items()
    }


def text_encoder_params(model: TextTransformer, state: Mapping[str, np.ndarray]) -> Params:
    """`TextTransformer` params from a `CLIPTextModelWithProjection` state dict."""
    clip_config = CLIPConfig(text=model.config, projection_dim=model.projection_dim)
    rows = [
        (ours.removeprefix("text/"), theirs, transform, heads)
        for ours, theirs, transform, heads in hf_clip.parameter_map(clip_config)
        if ours.startswith("text/")
    ]
    expected = _shape_dict(_text_shapes(model))
    used = {theirs for _, theirs, _, _ in rows}
    extra = sorted(k for k in state if k not in used and not k.endswith("position_ids"))
    if extra:
        raise ValueError(f"text_encoder: tensors without a place in the model: {extra[:10]}")
    flat = {}
    for ours, theirs, transform, heads in rows:
        if theirs not in state:
            raise ValueError(f"text_encoder: tensor {theirs!r} for {ours} is missing")
        try:
            value = transform(np.asarray(state[theirs], np.float32), heads)
        except ValueError:
            value = None
        if value is None or tuple(value.shape) != expected[ours]:
            raise ValueError(
                f"text_encoder: tensor {theirs!r} of shape {tuple(state[theirs].shape)} does not "
                f"fit {ours} of shape {expected[ours]}"
            )
        flat[ours] = value
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


def _decoder_shapes(model: Decoder, clip_dim: int, size: int) -> Params:
    return jax.eval_shape(
        lambda: model.init(
            jax.random.key(0),
            jnp.zeros((1, size, size, 3)),
            jnp.zeros((1,)),
            jnp.zeros((1, clip_dim)),
            caption_states=jnp.zeros((1, 1, clip_dim)),
            caption_embed=jnp.zeros((1, clip_dim)),
        )
    )["params"]


def _upsampler_shapes(model: Upsampler, channels: int, size: int) -> Params:
    return jax.eval_shape(
        lambda: model.init(
            jax.random.key(0),
            jnp.zeros((1, size, size, channels)),
            jnp.zeros((1, size // 4, size // 4, channels)),
            jnp.zeros((1,)),
        )
    )["params"]


def convert_karlo(diffusers_dir: str | pathlib.Path) -> KarloCheckpoint:
    """Read and convert every component of a diffusers UnCLIPPipeline directory."""
    root = pathlib.Path(diffusers_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"diffusers UnCLIP directory {str(root)!r} does not exist")
    index = _read_json(root / "model_index.json", "model_index")
    for component in COMPONENTS:
        if component not in index or not (root / component).is_dir():
            raise FileNotFoundError(
                f"{component}: component missing from {root} (an UnCLIPPipeline has {COMPONENTS})"
            )
    configs = {c: _read_json(root / c / "config.json", c) for c in MODELS}
    schedulers = {
        c.removesuffix("_scheduler"): _named(
            c,
            lambda c=c: KarloScheduler.from_diffusers(
                _read_json(root / c / "scheduler_config.json", c)
            ),
        )
        for c in SCHEDULERS
    }
    for component in MODELS:  # fail before reading gigabytes if any component has none
        weight_files(root / component, component)

    def weights(component: str) -> dict[str, np.ndarray]:  # read when converted: lower peak
        return read_weights(root / component, component)

    prior = _named("prior", lambda: prior_from_diffusers_config(configs["prior"]))
    prior_params, normalizer = _named(
        "prior", lambda: convert_prior_state_dict(weights("prior"), prior)
    )

    text_config = _named("text_encoder", lambda: _text_config(configs["text_encoder"]))
    text_encoder = TextTransformer(text_config.text, text_config.projection_dim)
    text_params = text_encoder_params(text_encoder, weights("text_encoder"))

    decoder_config = configs["decoder"]
    text_proj_config = configs["text_proj"]
    _check_channels(decoder_config, schedulers["decoder"], "decoder", in_channels=3)
    for component in ("super_res_first", "super_res_last"):
        out = int(configs[component]["out_channels"])
        _check_channels(configs[component], schedulers["super_res"], component, 2 * out)
    decoder = Decoder(
        _named("decoder", lambda: unet_config_from_diffusers(decoder_config, "decoder", True)),
        context_dim=int(decoder_config["cross_attention_dim"]),
        num_image_tokens=int(text_proj_config.get("clip_extra_context_tokens", 4)),
        caption_source="clip",
    )
    clip_dim = int(text_proj_config.get("clip_embeddings_dim", 768))
    decoder_size = int(decoder_config["sample_size"])
    decoder_params = decoder_params_from_diffusers(
        weights("decoder"),
        weights("text_proj"),
        _decoder_shapes(decoder, clip_dim, decoder_size),
    )

    first = configs["super_res_first"]
    unet = _named(
        "super_res_first", lambda: unet_config_from_diffusers(first, "super_res_first", False)
    )
    last_unet = _named(
        "super_res_last",
        lambda: unet_config_from_diffusers(configs["super_res_last"], "super_res_last", False),
    )
    if last_unet != unet:
        raise ValueError(
            f"super_res_last: architecture {last_unet} differs from super_res_first's {unet}"
        )
    super_res = Upsampler(unet)
    size = int(first["sample_size"])
    shapes = _upsampler_shapes(super_res, int(first["out_channels"]), size)
    super_res_params = {
        c: _named(c, lambda c=c: upsampler_params_from_diffusers(weights(c), shapes))
        for c in ("super_res_first", "super_res_last")
    }
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
        super_res_size=size,
        tokenizer_dir=root / "tokenizer",
    )


def num_params(params: Params) -> int:
    return sum(int(np.prod(np.shape(leaf))) for leaf in jax.tree.leaves(params))


def _module_fields(module: nn.Module) -> dict[str, Any]:
    skip = {"parent", "name", "dtype", "param_dtype"}
    return {
        f.name: getattr(module, f.name) for f in dataclasses.fields(module) if f.name not in skip
    }


def _as_json(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    return value


def checkpoint_config(checkpoint: KarloCheckpoint) -> dict[str, Any]:
    """The JSON-able description of every stage (`CONFIG_FILE`)."""
    decoder = {k: _as_json(v) for k, v in _module_fields(checkpoint.decoder).items()}
    decoder.pop("caption_transformer")
    return {
        "format": "karlo",
        "text_encoder": {
            "text": dataclasses.asdict(checkpoint.text_encoder.config),
            "projection_dim": checkpoint.text_encoder.projection_dim,
        },
        "prior": _module_fields(checkpoint.prior),
        "normalizer": checkpoint.normalizer.kind,
        "decoder": decoder,
        "super_res": {k: _as_json(v) for k, v in _module_fields(checkpoint.super_res).items()},
        "schedulers": {k: v.to_dict() for k, v in checkpoint.schedulers.items()},
        "decoder_size": checkpoint.decoder_size,
        "super_res_size": checkpoint.super_res_size,
        "sampling": checkpoint.sampling,
    }


def _stage_trees(checkpoint: KarloCheckpoint) -> dict[str, Params]:
    trees = {name: {"params": params} for name, params in checkpoint.params.items()}
    trees["prior"]["normalizer"] = {
        "mean": checkpoint.normalizer.mean,
        "std": checkpoint.normalizer.std,
    }
    return trees


def save_karlo(checkpoint: KarloCheckpoint, directory: str | pathlib.Path) -> None:
    """Write `CONFIG_FILE`, one orbax parameter directory per stage, and `tokenizer/`.

    Written to a temporary sibling first and renamed at the end, so an interrupted save leaves no
    half checkpoint; an existing directory is only replaced if it is a Karlo checkpoint or empty.
    """
    import orbax.checkpoint as ocp

    from unclip_jax.text.tokenizer import CLIPTokenizer

    path = pathlib.Path(directory).absolute()
    if path.exists() and any(path.iterdir()) and not (path / CONFIG_FILE).is_file():
        raise ValueError(f"{path} exists and is not a Karlo checkpoint; not overwriting it")
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if checkpoint.tokenizer_dir is not None:
        context = checkpoint.text_encoder.config.context_length
        tokenizer = CLIPTokenizer.from_pretrained(checkpoint.tokenizer_dir, context)
        tokenizer.save(tmp / "tokenizer")
    with ocp.StandardCheckpointer() as checkpointer:
        for name, tree in _stage_trees(checkpoint).items():
            checkpointer.save(tmp / name, jax.tree.map(jnp.asarray, tree))
    (tmp / CONFIG_FILE).write_text(json.dumps(checkpoint_config(checkpoint), indent=2))
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)


def load_karlo(directory: str | pathlib.Path) -> KarloCheckpoint:
    """The checkpoint `save_karlo` wrote; every stage's shapes checked against its config."""
    import orbax.checkpoint as ocp

    path = pathlib.Path(directory).absolute()
    config = _read_json(path / CONFIG_FILE, "checkpoint")
    if config.get("format") != "karlo":
        raise ValueError(
            f"{path / CONFIG_FILE}: format must be 'karlo', got {config.get('format')!r}"
        )
    text = config["text_encoder"]
    text_encoder = TextTransformer(TextConfig(**text["text"]), text["projection_dim"])
    prior = DiffusionPrior(**config["prior"])
    decoder_fields = dict(config["decoder"])
    decoder = Decoder(UNetConfig(**decoder_fields.pop("unet")), **decoder_fields)
    super_res_fields = dict(config["super_res"])
    super_res = Upsampler(UNetConfig(**super_res_fields.pop("unet")), **super_res_fields)
    schedulers = {k: KarloScheduler.from_dict(v) for k, v in config["schedulers"].items()}
    clip_dim = prior.embed_dim
    size = config["super_res_size"]
    channels = super_res.unet.out_channels
    text_dim = prior.text_embed_dim or clip_dim
    expected = {
        "text_encoder": _text_shapes(text_encoder),
        "prior": jax.eval_shape(
            lambda: prior.init(
                jax.random.key(0),
                jnp.zeros((1, clip_dim)),
                jnp.zeros((1,)),
                jnp.zeros((1, text_dim)),
                jnp.zeros((1, prior.num_tokens, prior.token_dim or clip_dim)),
            )
        )["params"],
        "decoder": _decoder_shapes(decoder, clip_dim, config["decoder_size"]),
        "super_res_first": _upsampler_shapes(super_res, channels, size),
        "super_res_last": _upsampler_shapes(super_res, channels, size),
    }
    params, normalizer = {}, None
    with ocp.StandardCheckpointer() as checkpointer:
        for name, shapes in expected.items():
            if not (path / name).is_dir():
                raise FileNotFoundError(f"{name}: stage missing from checkpoint {path}")
            tree = checkpointer.restore(path / name)
            want = _shape_dict(shapes)
            flat = traverse_util.flatten_dict(tree["params"], sep="/")
            got = {k: tuple(np.shape(v)) for k, v in flat.items()}
            for key in sorted(set(want) | set(got)):
                if want.get(key) != got.get(key):
                    raise ValueError(
                        f"{name}: parameter {key} should have shape {want.get(key)} by "
                        f"{CONFIG_FILE}, the checkpoint holds {got.get(key)} (None = absent)"
                    )
            params[name] = jax.tree.map(jnp.asarray, tree["params"])
            if name == "prior":
                normalizer = EmbeddingNormalizer.create(
                    config["normalizer"], clip_dim, **tree["normalizer"]
                )
    tokenizer_dir = path / "tokenizer"
    return KarloCheckpoint(
        text_encoder=text_encoder,
        prior=prior,
        decoder=decoder,
        super_res=super_res,
        params=params,
        normalizer=normalizer,
        schedulers=schedulers,
        decoder_size=config["decoder_size"],
        super_res_size=size,
        sampling=config["sampling"],
        tokenizer_dir=tokenizer_dir if tokenizer_dir.is_dir() else None,
    )
