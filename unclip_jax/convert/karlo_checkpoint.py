"""Our Karlo checkpoint directory: the `KarloCheckpoint` record, its save and load, shape checks.

    save_karlo(checkpoint, "karlo-jax/")    # CONFIG_FILE + one orbax directory per stage
    checkpoint = load_karlo("karlo-jax/")   # every stage's shapes checked against CONFIG_FILE

The `*_shapes` functions give the abstract parameters each stage's module expects; the loader and
the diffusers converter (`diffusers_unclip`) check tensors against them.
"""

import dataclasses
import json
import pathlib
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from flax import traverse_util

from unclip_jax.diffusion.karlo import KarloScheduler
from unclip_jax.models.clip import TextConfig, TextTransformer
from unclip_jax.models.prior import DiffusionPrior, EmbeddingNormalizer
from unclip_jax.models.unet import Decoder, UNetConfig, Upsampler
from unclip_jax.storage import checkpoints
from unclip_jax.storage.json_files import read_json
from unclip_jax.storage.locations import commit, location, temporary_sibling

Params = dict[str, Any]

# The sampling settings of diffusers' UnCLIPPipeline.__call__ (Karlo's).
KARLO_SAMPLING = {
    "prior": {"steps": 25, "guidance_scale": 4.0},
    "decoder": {"steps": 25, "guidance_scale": 8.0},
    "super_res": {"steps": 7},
}
CONFIG_FILE = "unclip_karlo.json"


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


def text_encoder_shapes(model: TextTransformer) -> Params:
    """The text encoder's abstract parameters."""
    ids = jnp.zeros((1, model.config.context_length), jnp.int32)
    return jax.eval_shape(model.init, jax.random.key(0), ids)["params"]


def prior_shapes(prior: DiffusionPrior) -> Params:
    """The prior's abstract parameters."""
    clip_dim = prior.embed_dim
    text_dim = prior.text_embed_dim or clip_dim
    return jax.eval_shape(
        lambda: prior.init(
            jax.random.key(0),
            jnp.zeros((1, clip_dim)),
            jnp.zeros((1,)),
            jnp.zeros((1, text_dim)),
            jnp.zeros((1, prior.num_tokens, prior.token_dim or clip_dim)),
        )
    )["params"]


def decoder_shapes(model: Decoder, clip_dim: int, size: int) -> Params:
    """The decoder's abstract parameters (with Karlo's text_proj) at output side `size`."""
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


def upsampler_shapes(model: Upsampler, channels: int, size: int) -> Params:
    """A super-resolution stage's abstract parameters at output side `size`."""
    return jax.eval_shape(
        lambda: model.init(
            jax.random.key(0),
            jnp.zeros((1, size, size, channels)),
            jnp.zeros((1, size // 4, size // 4, channels)),
            jnp.zeros((1,)),
        )
    )["params"]


def shape_dict(tree: Params) -> dict[str, tuple[int, ...]]:
    """`{"a/b/kernel": shape}` of a (possibly boxed, possibly abstract) parameter tree."""
    return {
        k: tuple(v.shape)
        for k, v in traverse_util.flatten_dict(nn.meta.unbox(tree), sep="/").items()
    }


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


def check_save_target(directory: str | pathlib.Path) -> epath.Path:
    """Where `save_karlo` may write: new, empty, or an earlier Karlo checkpoint (it replaces it)."""
    return checkpoints.check_save_target(directory, CONFIG_FILE, "Karlo")


def save_karlo(checkpoint: KarloCheckpoint, directory: str | pathlib.Path) -> None:
    """Write `CONFIG_FILE`, one orbax parameter directory per stage, and `tokenizer/`.

    Written to a temporary sibling first and renamed at the end, so an interrupted save leaves no
    half checkpoint; an existing directory is only replaced if it is a Karlo checkpoint or empty.
    """
    import orbax.checkpoint as ocp

    from unclip_jax.storage.tokenizers import save_tokenizer
    from unclip_jax.text.tokenizer import CLIPTokenizer

    path = check_save_target(directory)
    tmp = temporary_sibling(path)
    if checkpoint.tokenizer_dir is not None:
        context = checkpoint.text_encoder.config.context_length
        tokenizer = CLIPTokenizer.from_pretrained(checkpoint.tokenizer_dir, context)
        save_tokenizer(tokenizer, tmp / "tokenizer")
    with ocp.StandardCheckpointer() as checkpointer:
        for name, tree in _stage_trees(checkpoint).items():
            checkpointer.save(tmp / name, jax.tree.map(jnp.asarray, tree))
    (tmp / CONFIG_FILE).write_text(json.dumps(checkpoint_config(checkpoint), indent=2))
    commit(tmp, path)


def _read_config(path: pathlib.Path) -> dict[str, Any]:
    """`CONFIG_FILE` of the checkpoint at `path`, which must describe the "karlo" format."""
    config = read_json(path / CONFIG_FILE, "checkpoint")
    if config.get("format") != "karlo":
        raise ValueError(
            f"{path / CONFIG_FILE}: format must be 'karlo', got {config.get('format')!r}"
        )
    return config


def _modules(config: dict[str, Any]) -> tuple[TextTransformer, DiffusionPrior, Decoder, Upsampler]:
    """The text encoder, prior, decoder and super-resolution modules `CONFIG_FILE` describes."""
    text = config["text_encoder"]
    text_encoder = TextTransformer(TextConfig(**text["text"]), text["projection_dim"])
    prior = DiffusionPrior(**config["prior"])
    decoder_fields = dict(config["decoder"])
    decoder = Decoder(UNetConfig(**decoder_fields.pop("unet")), **decoder_fields)
    super_res_fields = dict(config["super_res"])
    super_res = Upsampler(UNetConfig(**super_res_fields.pop("unet")), **super_res_fields)
    return text_encoder, prior, decoder, super_res


def _restore_stage(checkpointer: Any, path: pathlib.Path, name: str, shapes: Params) -> Params:
    """Stage `name`'s saved tree, its parameters checked against `shapes`."""
    if not (path / name).is_dir():
        raise FileNotFoundError(f"{name}: stage missing from checkpoint {path}")
    tree = checkpointer.restore(path / name)
    want = shape_dict(shapes)
    flat = traverse_util.flatten_dict(tree["params"], sep="/")
    got = {k: tuple(np.shape(v)) for k, v in flat.items()}
    for key in sorted(set(want) | set(got)):
        if want.get(key) != got.get(key):
            raise ValueError(
                f"{name}: parameter {key} should have shape {want.get(key)} by "
                f"{CONFIG_FILE}, the checkpoint holds {got.get(key)} (None = absent)"
            )
    return tree


def load_karlo(directory: str | pathlib.Path) -> KarloCheckpoint:
    """The checkpoint `save_karlo` wrote; every stage's shapes checked against its config."""
    import orbax.checkpoint as ocp

    path = location(directory)
    config = _read_config(path)
    text_encoder, prior, decoder, super_res = _modules(config)
    schedulers = {k: KarloScheduler.from_dict(v) for k, v in config["schedulers"].items()}
    clip_dim = prior.embed_dim
    size = config["super_res_size"]
    channels = super_res.unet.out_channels
    expected = {
        "text_encoder": text_encoder_shapes(text_encoder),
        "prior": prior_shapes(prior),
        "decoder": decoder_shapes(decoder, clip_dim, config["decoder_size"]),
        "super_res_first": upsampler_shapes(super_res, channels, size),
        "super_res_last": upsampler_shapes(super_res, channels, size),
    }
    params, normalizer = {}, None
    with ocp.StandardCheckpointer() as checkpointer:
        for name, shapes in expected.items():
            tree = _restore_stage(checkpointer, path, name, shapes)
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
