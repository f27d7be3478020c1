"""Import Hugging Face CLIP checkpoints (a local `save_pretrained` directory) into `models.clip`,
and save/load our own CLIP checkpoints (orbax parameters + config JSON).

Weights are read from `model.safetensors` (sharded or not; no torch needed) or, failing that,
`pytorch_model.bin` (needs torch). Every tensor is checked against the shape our model expects;
mismatched, missing or unexpected tensors raise a ValueError naming the parameter path and both
shapes.
"""

import json
import math
import pathlib
from collections.abc import Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from flax import traverse_util

from unclip_jax.models.clip import CLIP, CLIPConfig, TextConfig, VisionConfig
from unclip_jax.models.frozen_clip import FrozenCLIP
from unclip_jax.nn.precision import cast_floats, compute_dtype
from unclip_jax.storage.json_files import read_json
from unclip_jax.storage.locations import location

Params = dict

# Our tower field -> Hugging Face's name for it. Fields a config omits take Hugging Face's
# defaults, which are those of `TextConfig()` and `VisionConfig()` (OpenAI's ViT-B/32).
_TOWER_FIELDS = {
    "width": "hidden_size",
    "layers": "num_hidden_layers",
    "heads": "num_attention_heads",
    "mlp_dim": "intermediate_size",
    "act": "hidden_act",
    "layer_norm_eps": "layer_norm_eps",
}
_TEXT_FIELDS = {
    **_TOWER_FIELDS,
    "vocab_size": "vocab_size",
    "context_length": "max_position_embeddings",
    "eos_token_id": "eos_token_id",
}
_VISION_FIELDS = {
    **_TOWER_FIELDS,
    "image_size": "image_size",
    "patch_size": "patch_size",
    "channels": "num_channels",
}
_IGNORED_SUFFIXES = ("position_ids",)  # buffers some older checkpoints carry
CONFIG_FILE = "clip_config.json"
PARAMS_DIR = "params"
TOKENIZER_DIR = "tokenizer"


def _single_int(value, name: str) -> int:
    if isinstance(value, list | tuple):
        if len(set(value)) != 1:
            raise ValueError(f"{name} must be square, got {value}")
        value = value[0]
    return int(value)


def _fields(hf_tower: dict | None, names: dict[str, str]) -> dict:
    """Our fields that a Hugging Face tower config sets."""
    hf_tower = hf_tower or {}
    return {ours: hf_tower[theirs] for ours, theirs in names.items() if theirs in hf_tower}


def config_from_hf(hf_config: dict) -> CLIPConfig:
    """Our CLIPConfig from the dict of a Hugging Face CLIP `config.json`.

    Pooling follows Hugging Face exactly: eos_token_id == 2 marks configs written before the end
    token's id was stored correctly, and those pool at the largest token id (OpenAI's rule);
    otherwise at the first eos_token_id.
    """
    if hf_config.get("model_type", "clip") != "clip":
        raise ValueError(
            f"expected a CLIP config (model_type 'clip'), got {hf_config['model_type']!r}"
        )
    text = _fields(hf_config.get("text_config"), _TEXT_FIELDS)
    eos = text.get("eos_token_id", TextConfig.eos_token_id)
    text["eos_token_id"] = int(eos[0] if isinstance(eos, list) else eos)
    text["pooling"] = "argmax" if text["eos_token_id"] == 2 else "eos"
    vision = _fields(hf_config.get("vision_config"), _VISION_FIELDS)
    for name in ("image_size", "patch_size"):
        if name in vision:
            vision[name] = _single_int(vision[name], f"vision {name}")
    return CLIPConfig(
        text=TextConfig(**text),
        vision=VisionConfig(**vision),
        projection_dim=hf_config.get("projection_dim", 512),
        logit_scale_init=hf_config.get("logit_scale_init_value", 2.6592),
    )


# Tensor transforms: Hugging Face layout -> ours.
def _linear(w, _):  # [out, in] -> [in, out]
    return w.T


def _qkv_kernel(w, heads):  # [H*Dh, D] -> [D, H, Dh]
    return w.T.reshape(w.shape[1], heads, -1)


def _qkv_bias(b, heads):  # [H*Dh] -> [H, Dh]
    return b.reshape(heads, -1)


def _out_kernel(w, heads):  # [D, H*Dh] -> [H, Dh, D]
    return w.T.reshape(heads, -1, w.shape[0])


def _patch_kernel(w, _):  # conv [D, C, p, p] -> [p*p*C, D] (patches flattened as (row, col, C))
    return w.transpose(2, 3, 1, 0).reshape(-1, w.shape[0])


def _same(x, _):
    return x


Transform = Callable[[np.ndarray, int], np.ndarray]


def _layer_norm(ours: str, theirs: str) -> list[tuple[str, str, Transform]]:
    return [(f"{ours}/scale", f"{theirs}.weight", _same), (f"{ours}/bias", f"{theirs}.bias", _same)]


def _encoder_layer(ours: str, theirs: str) -> list[tuple[str, str, Transform]]:
    rows = _layer_norm(f"{ours}/ln_1", f"{theirs}.layer_norm1")
    rows += _layer_norm(f"{ours}/ln_2", f"{theirs}.layer_norm2")
    for mine, hf in (("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj")):
        rows.append((f"{ours}/attn/{mine}/kernel", f"{theirs}.self_attn.{hf}.weight", _qkv_kernel))
        rows.append((f"{ours}/attn/{mine}/bias", f"{theirs}.self_attn.{hf}.bias", _qkv_bias))
    rows.append((f"{ours}/attn/out/kernel", f"{theirs}.self_attn.out_proj.weight", _out_kernel))
    rows.append((f"{ours}/attn/out/bias", f"{theirs}.self_attn.out_proj.bias", _same))
    for fc in ("fc1", "fc2"):
        rows.append((f"{ours}/{fc}/kernel", f"{theirs}.mlp.{fc}.weight", _linear))
        rows.append((f"{ours}/{fc}/bias", f"{theirs}.mlp.{fc}.bias", _same))
    return rows


def parameter_map(config: CLIPConfig) -> list[tuple[str, str, Transform, int]]:
    """(our path, Hugging Face key, transform, heads) for every parameter of CLIP(config)."""
    text = [
        ("text/token_embedding/embedding", "text_model.embeddings.token_embedding.weight", _same),
        ("text/position_embedding", "text_model.embeddings.position_embedding.weight", _same),
        *_layer_norm("text/ln_final", "text_model.final_layer_norm"),
        ("text/projection/kernel", "text_projection.weight", _linear),
    ]
    for i in range(config.text.layers):
        text += _encoder_layer(f"text/block_{i}", f"text_model.encoder.layers.{i}")
    vision = [
        (
            "vision/patch_embedding/kernel",
            "vision_model.embeddings.patch_embedding.weight",
            _patch_kernel,
        ),
        ("vision/class_embedding", "vision_model.embeddings.class_embedding", _same),
        ("vision/position_embedding", "vision_model.embeddings.position_embedding.weight", _same),
        *_layer_norm("vision/ln_pre", "vision_model.pre_layrnorm"),
        *_layer_norm("vision/ln_post", "vision_model.post_layernorm"),
        ("vision/projection/kernel", "visual_projection.weight", _linear),
    ]
    for i in range(config.vision.layers):
        vision += _encoder_layer(f"vision/block_{i}", f"vision_model.encoder.layers.{i}")
    return (
        [(*row, config.text.heads) for row in text]
        + [(*row, config.vision.heads) for row in vision]
        + [("logit_scale", "logit_scale", _same, 1)]
    )


def param_shapes(config: CLIPConfig) -> dict[str, tuple[int, ...]]:
    """{"text/block_0/fc1/kernel": shape, ...} of CLIP(config), from eval_shape."""
    text, vision = config.text, config.vision
    tree = jax.eval_shape(
        CLIP(config).init,
        jax.random.key(0),
        jnp.zeros((1, text.context_length), jnp.int32),
        jnp.zeros((1, vision.image_size, vision.image_size, vision.channels), jnp.float32),
    )
    flat = jax.tree_util.tree_flatten_with_path(nn.unbox(tree)["params"])[0]
    return {"/".join(k.key for k in path): tuple(leaf.shape) for path, leaf in flat}


def map_state_dict(
    rows: list[tuple[str, str, Transform, int]],
    state: Mapping[str, np.ndarray],
    expected: Mapping[str, tuple[int, ...]],
) -> dict[str, np.ndarray]:
    """{our path: tensor in our layout} for `rows` of `parameter_map` (or a subset) from a Hugging
    Face state dict. Raises ValueError naming the tensor and both shapes when one is left over,
    missing or of a shape that does not fit."""
    mapped = {ours for ours, *_ in rows}
    if mapped != set(expected):
        raise AssertionError(f"parameter map out of date: {sorted(mapped ^ set(expected))}")
    used = {hf for _, hf, _, _ in rows}
    unexpected = sorted(k for k in state if k not in used and not k.endswith(_IGNORED_SUFFIXES))
    if unexpected:
        raise ValueError(f"checkpoint has tensors CLIP does not use: {unexpected[:10]}")
    flat = {}
    for ours, hf, transform, heads in rows:
        if hf not in state:
            raise ValueError(
                f"parameter {ours}: tensor {hf!r} is missing from the checkpoint "
                f"(model expects shape {expected[ours]})"
            )
        tensor = np.asarray(state[hf], np.float32)
        try:
            value = transform(tensor, heads)
        except ValueError:
            value = None
        if value is None or tuple(value.shape) != expected[ours]:
            raise ValueError(
                f"parameter {ours}: tensor {hf!r} has shape {tuple(tensor.shape)}, which does not "
                f"fit the model's shape {expected[ours]}"
            )
        flat[ours] = value
    return flat


def params_from_state_dict(config: CLIPConfig, state: dict[str, np.ndarray]) -> Params:
    """Our parameter tree `{"params": ...}` (float32 numpy) from a Hugging Face state dict."""
    flat = map_state_dict(parameter_map(config), state, param_shapes(config))
    return {"params": traverse_util.unflatten_dict(flat, sep="/")}


def _read_safetensors(path: pathlib.Path) -> dict[str, np.ndarray]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="flax") as f:
            return {key: np.asarray(f.get_tensor(key), np.float32) for key in f.keys()}  # noqa: SIM118
    except (SafetensorError, OSError) as error:
        raise ValueError(f"{path} is not a readable safetensors file: {error}") from None


def _read_torch_bin(path: pathlib.Path) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError:
        raise ValueError(
            f"{path} is a PyTorch checkpoint and torch is not installed; install torch or "
            "provide model.safetensors"
        ) from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for unreadable pickles
        raise ValueError(f"{path} is not a readable PyTorch state dict: {error}") from None
    return {key: value.float().numpy() for key, value in state.items()}


def read_state_dict(hf_dir: pathlib.Path) -> dict[str, np.ndarray]:
    """All tensors of a Hugging Face model directory as float32 numpy arrays."""
    index = hf_dir / "model.safetensors.index.json"
    if (hf_dir / "model.safetensors").is_file():
        return _read_safetensors(hf_dir / "model.safetensors")
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        state = {}
        for shard in shards:
            state.update(_read_safetensors(hf_dir / shard))
        return state
    if (hf_dir / "pytorch_model.bin").is_file():
        return _read_torch_bin(hf_dir / "pytorch_model.bin")
    raise FileNotFoundError(
        f"no weights in {hf_dir}: expected model.safetensors, model.safetensors.index.json or "
        "pytorch_model.bin"
    )


def _existing_dir(directory: str | pathlib.Path, what: str) -> epath.Path:
    path = epath.Path(directory)
    if not path.exists():
        raise FileNotFoundError(f"{what} {str(path)!r} does not exist")
    if not path.is_dir():
        raise NotADirectoryError(f"{what} {str(path)!r} is not a directory")
    if not any(path.iterdir()):
        raise FileNotFoundError(f"{what} {str(path)!r} is empty")
    return path


def load_hf_clip(hf_dir: str | pathlib.Path) -> tuple[CLIPConfig, Params]:
    """(config, {"params": ...}) from a local Hugging Face CLIPModel directory."""
    path = _existing_dir(hf_dir, "Hugging Face CLIP directory")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"no config.json in Hugging Face CLIP directory {str(path)!r}")
    try:
        hf_config = json.loads(config_file.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{config_file} is not valid JSON: {error}") from None
    config = config_from_hf(hf_config)
    return config, params_from_state_dict(config, read_state_dict(path))


def save_clip(directory: str | pathlib.Path, config: CLIPConfig, params: Params) -> None:
    """Write `clip_config.json` and the orbax parameter checkpoint `params/` under directory
    (local or a URI)."""
    import orbax.checkpoint as ocp

    path = location(directory)
    path.mkdir(parents=True, exist_ok=True)
    (path / CONFIG_FILE).write_text(json.dumps(config.to_dict(), indent=2))
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(path / PARAMS_DIR, jax.tree.map(jnp.asarray, params), force=True)


def read_clip_config(file: str | pathlib.Path) -> CLIPConfig:
    """The CLIPConfig of a `clip_config.json`; ValueError naming the file when it is not one."""
    try:
        return CLIPConfig.from_dict(read_json(file, "CLIP checkpoint"))
    except (KeyError, TypeError, AttributeError) as error:
        raise ValueError(f"{file} does not describe a CLIP model: {error!r}") from None


def load_clip(directory: str | pathlib.Path) -> tuple[CLIPConfig, Params]:
    """(config, {"params": ...}) saved by `save_clip`; shapes are checked against the config."""
    import orbax.checkpoint as ocp

    path = location(_existing_dir(directory, "CLIP checkpoint directory"))
    if not (path / CONFIG_FILE).is_file() or not (path / PARAMS_DIR).is_dir():
        raise FileNotFoundError(
            f"{str(path)!r} is not a CLIP checkpoint: expected {CONFIG_FILE} and {PARAMS_DIR}/"
        )
    config = read_clip_config(path / CONFIG_FILE)
    expected = param_shapes(config)
    with ocp.StandardCheckpointer() as checkpointer:
        stored_tree = checkpointer.metadata(path / PARAMS_DIR).item_metadata
        stored = {
            "/".join(str(k.key) for k in key_path[1:]): tuple(leaf.shape)
            for key_path, leaf in jax.tree_util.tree_flatten_with_path(dict(stored_tree))[0]
        }
        for name in sorted(set(expected) | set(stored)):
            if expected.get(name) != stored.get(name):
                raise ValueError(
                    f"parameter {name}: {CONFIG_FILE} expects shape {expected.get(name)}, "
                    f"{path / PARAMS_DIR} holds {stored.get(name)} (None = absent)"
                )
        target = {
            "params": traverse_util.unflatten_dict(
                {k: jax.ShapeDtypeStruct(shape, jnp.float32) for k, shape in expected.items()},
                sep="/",
            )
        }
        params = checkpointer.restore(path / PARAMS_DIR, target)
    return config, params


def load_frozen_clip(directory: str | pathlib.Path, dtype: str | None = None) -> FrozenCLIP:
    """The CLIP saved by `save_clip`, for encoding only (parameters on the host), computing in
    `dtype` (a name of `nn.precision`'s COMPUTE_DTYPES, its parameters cast; None: float32)."""
    config, variables = load_clip(directory)
    params = jax.device_get(variables["params"])
    if dtype is None:
        return FrozenCLIP(CLIP(config), params)
    dtype = compute_dtype(dtype)
    return FrozenCLIP(CLIP(config, dtype=dtype), cast_floats(params, dtype))


def convert_directory(hf_dir: str | pathlib.Path, out: str | pathlib.Path) -> int:
    """`hf_dir` (Hugging Face CLIP) -> our checkpoint at `out`, its tokenizer (when `hf_dir`
    has one) in `out/tokenizer`; returns the number of parameters."""
    from unclip_jax.storage.tokenizers import save_tokenizer
    from unclip_jax.text.tokenizer import CLIPTokenizer

    config, params = load_hf_clip(hf_dir)
    save_clip(out, config, params)
    hf_path = pathlib.Path(hf_dir)
    if (hf_path / "vocab.json").is_file() or (hf_path / "tokenizer.json").is_file():
        tokenizer = CLIPTokenizer.from_pretrained(hf_path, config.text.context_length)
        save_tokenizer(tokenizer, epath.Path(out) / TOKENIZER_DIR)
    count = num_params(params)
    print(f"converted {hf_dir} -> {out}: {count:,} parameters")
    return count


def num_params(params: Params) -> int:
    return sum(math.prod(np.shape(leaf)) for leaf in jax.tree.leaves(params))
