"""Import OpenAI's dVAE weights (the `dall_e` package's `Encoder` / `Decoder`) into
`models.dvae`, and save/load our own dVAE checkpoints (`dvae_config.json` + one orbax parameter
directory per half).

Two file formats are read: a `state_dict` saved with `torch.save` (read with
`weights_only=True`, which runs no code) and OpenAI's released whole-module pickles
(`encoder.pkl`, `decoder.pkl`), read only with `allow_pickle=True` because unpickling them runs
code from the file (and imports `dall_e`). The architecture is inferred from the tensor shapes;
every tensor is checked against the shape our model expects, and errors are one line naming the
file or the tensor.
"""

import json
import pathlib
import pickletools
import re
import zipfile
from collections.abc import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from flax import traverse_util

from unclip_jax.models.dvae import DVAEConfig, DVAEDecoder, DVAEEncoder
from unclip_jax.storage import checkpoints
from unclip_jax.storage.checkpoints import read_params, write_params
from unclip_jax.storage.json_files import read_json
from unclip_jax.storage.locations import commit, location, temporary_sibling

Params = dict
CONFIG_FILE = "dvae_config.json"
HALVES = ("encoder", "decoder")
_BLOCK_KEY = re.compile(r"blocks\.group_(\d+)\.block_(\d+)\.")
# Modules whose names a plain state dict's pickle holds (tensors, OrderedDict, builtins).
_STATE_DICT_MODULES = ("torch.", "collections.", "builtins.", "__builtin__.")
_PICKLE_HINT = (
    "reading it runs code from the file: pass --allow_pickle (allow_pickle=True) only for a file "
    "you trust"
)


# ----------------------------------------------------------------------------- reading files


def _pickled_classes(path: pathlib.Path) -> list[str]:
    """Classes outside torch that a zip-format torch file's pickle names, read without
    unpickling (`pickletools` only lists the opcodes); [] when the file is not one."""
    try:
        with zipfile.ZipFile(path) as archive:
            name = next(n for n in archive.namelist() if n.endswith("data.pkl"))
            data = archive.read(name)
        names, strings = [], []
        for opcode, arg, _ in pickletools.genops(data):
            if opcode.name == "GLOBAL":
                names.append(str(arg).replace(" ", "."))
            elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                names.append(".".join(strings[-2:]))
            elif isinstance(arg, str):
                strings.append(arg)
    except (zipfile.BadZipFile, StopIteration, OSError, ValueError, EOFError):
        return []
    return sorted({n for n in names if not n.startswith(_STATE_DICT_MODULES)})


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0][:200]}" if lines else type(error).__name__


def _load_torch(path: pathlib.Path, allow_pickle: bool) -> object:
    """`torch.load` of `path` on the CPU, its failures as one-line ValueErrors naming it."""
    try:
        import torch
    except ImportError:
        raise ValueError(f"{path} is a PyTorch file and torch is not installed") from None
    if not path.is_file():
        raise FileNotFoundError(f"no dVAE weight file at {path}")
    if allow_pickle:
        try:
            return torch.load(path, map_location="cpu", weights_only=False)
        except ModuleNotFoundError as error:
            raise ValueError(
                f"unpickling {path} needs the module {error.name!r} (OpenAI's pickles need "
                "`pip install --no-deps dall-e==0.1`)"
            ) from None
        except Exception as error:  # torch and pickle raise many types for unreadable files
            raise ValueError(
                f"{path} is not a readable PyTorch file (corrupt or truncated?): "
                f"{_first_line(error)}"
            ) from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types; classified below
        classes = _pickled_classes(path)
        if classes:
            raise ValueError(
                f"{path} is a whole-module pickle ({', '.join(classes[:3])}), not a state dict; "
                f"{_PICKLE_HINT}"
            ) from None
        raise ValueError(
            f"{path} is not a readable PyTorch state dict (corrupt or truncated?): "
            f"{_first_line(error)}"
        ) from None


def read_state_dict(path: str | pathlib.Path, allow_pickle: bool = False) -> dict[str, np.ndarray]:
    """The tensors of a dVAE half as float32 numpy arrays: a `state_dict` file, or (with
    `allow_pickle`) a whole pickled `dall_e` module such as OpenAI's `encoder.pkl`."""
    path = pathlib.Path(path)
    loaded = _load_torch(path, allow_pickle)
    if hasattr(loaded, "state_dict") and callable(loaded.state_dict):
        loaded = loaded.state_dict()
    if not isinstance(loaded, Mapping):
        raise ValueError(f"{path} holds a {type(loaded).__name__}, not a state dict or a module")
    state = {}
    for key, value in loaded.items():
        if not hasattr(value, "detach"):
            raise ValueError(f"{path}: entry {key!r} is a {type(value).__name__}, not a tensor")
        state[str(key)] = value.detach().float().cpu().numpy()
    return state


# ----------------------------------------------------------------------------- architecture


def _tensor(state: Mapping[str, np.ndarray], key: str, half: str) -> np.ndarray:
    if key not in state:
        raise ValueError(f"{half}: tensor {key!r} is missing; is this a dall_e {half}?")
    if state[key].ndim != 4:
        raise ValueError(
            f"{half}: tensor {key!r} must be a conv weight [out, in, k, k], "
            f"got shape {state[key].shape}"
        )
    return state[key]


def _group_layout(state: Mapping[str, np.ndarray], half: str) -> tuple[int, int]:
    """(group_count, n_blk_per_group) from the `blocks.group_G.block_I.` keys."""
    blocks: dict[int, set[int]] = {}
    for key in state:
        match = _BLOCK_KEY.match(key)
        if match:
            blocks.setdefault(int(match[1]), set()).add(int(match[2]))
    if not blocks:
        raise ValueError(
            f"{half}: no tensors named blocks.group_G.block_I.*; is it a dall_e {half}?"
        )
    counts = {len(ids) for ids in blocks.values()}
    full = all(ids == set(range(1, len(ids) + 1)) for ids in blocks.values())
    if sorted(blocks) != list(range(1, len(blocks) + 1)) or len(counts) != 1 or not full:
        layout = {g: sorted(ids) for g, ids in sorted(blocks.items())}
        raise ValueError(f"{half}: groups and blocks must be numbered 1..N alike, got {layout}")
    return len(blocks), counts.pop()


def config_from_state_dicts(
    encoder: Mapping[str, np.ndarray], decoder: Mapping[str, np.ndarray]
) -> DVAEConfig:
    """The DVAEConfig of a dall_e encoder and decoder, from their tensor shapes; ValueError
    naming the field on which the two halves disagree."""
    enc_groups, enc_blocks = _group_layout(encoder, "encoder")
    dec_groups, dec_blocks = _group_layout(decoder, "decoder")
    enc_in = _tensor(encoder, "blocks.input.w", "encoder")
    enc_out = _tensor(encoder, "blocks.output.conv.w", "encoder")
    dec_in = _tensor(decoder, "blocks.input.w", "decoder")
    dec_out = _tensor(decoder, "blocks.output.conv.w", "decoder")
    if dec_out.shape[0] % 2:
        raise ValueError(
            f"decoder: blocks.output.conv.w has {dec_out.shape[0]} output channels; expected "
            "2 per image channel (location, log-scale)"
        )
    fields = {
        "group_count": (enc_groups, dec_groups),
        "n_blk_per_group": (enc_blocks, dec_blocks),
        "n_hid": (enc_in.shape[0], dec_out.shape[1]),
        "channels": (enc_in.shape[1], dec_out.shape[0] // 2),
        "vocab_size": (enc_out.shape[0], dec_in.shape[1]),
    }
    for name, (ours, theirs) in fields.items():
        if ours != theirs:
            raise ValueError(f"encoder and decoder disagree on {name}: {ours} vs {theirs}")
    values = {name: int(pair[0]) for name, pair in fields.items()}
    return DVAEConfig(n_init=int(dec_in.shape[0]), **values)


def _modules(config: DVAEConfig) -> dict[str, tuple[nn.Module, jax.ShapeDtypeStruct]]:
    """half -> (module, a smallest input for it)."""
    f = config.downsample_factor
    return {
        "encoder": (DVAEEncoder(config), jax.ShapeDtypeStruct((1, f, f, config.channels), "f4")),
        "decoder": (DVAEDecoder(config), jax.ShapeDtypeStruct((1, 1, 1), jnp.int32)),
    }


def param_shapes(config: DVAEConfig, half: str) -> dict[str, tuple[int, ...]]:
    """{"group_1_block_1/conv_1/kernel": shape, ...} of one half of the dVAE, from eval_shape."""
    module, x = _modules(config)[half]
    tree = nn.unbox(jax.eval_shape(module.init, jax.random.key(0), x))["params"]
    flat = traverse_util.flatten_dict(tree, sep="/")
    return {path: tuple(leaf.shape) for path, leaf in flat.items()}


def openai_key(path: str) -> str:
    """OpenAI's name of our parameter: `group_2_block_1/conv_3/kernel` ->
    `blocks.group_2.block_1.res_path.conv_3.w`, `output/bias` -> `blocks.output.conv.b`."""
    *modules, leaf = path.split("/")
    suffix = {"kernel": "w", "bias": "b"}[leaf]
    if modules == ["input"]:
        return f"blocks.input.{suffix}"
    if modules == ["output"]:
        return f"blocks.output.conv.{suffix}"
    block, layer = modules
    group, index = re.fullmatch(r"group_(\d+)_block_(\d+)", block).groups()
    inner = "id_path" if layer == "id_path" else f"res_path.{layer}"
    return f"blocks.group_{group}.block_{index}.{inner}.{suffix}"


def _to_ours(tensor: np.ndarray, shape: tuple[int, ...]) -> np.ndarray | None:
    """OpenAI's layout -> ours: conv [out, in, k, k] -> [k, k, in, out]; the decoder's 1×1 code
    projection [out, vocab, 1, 1] -> [vocab, out]; biases unchanged. None if it cannot fit."""
    if len(shape) == 4 and tensor.ndim == 4:
        return tensor.transpose(2, 3, 1, 0)
    if len(shape) == 2 and tensor.ndim == 4 and tensor.shape[2:] == (1, 1):
        return tensor[:, :, 0, 0].T
    if len(shape) == 1 and tensor.ndim == 1:
        return tensor
    return None


def params_from_state_dict(
    config: DVAEConfig, half: str, state: Mapping[str, np.ndarray]
) -> Params:
    """`{"params": ...}` of one half from a dall_e state dict; ValueError naming the tensor and
    both shapes when one is missing, left over or does not fit."""
    expected = param_shapes(config, half)
    keys = {path: openai_key(path) for path in expected}
    unexpected = sorted(set(state) - set(keys.values()))
    if unexpected:
        raise ValueError(
            f"{half}: the checkpoint has tensors the dVAE does not use: {unexpected[:5]}"
        )
    flat = {}
    for path, key in keys.items():
        if key not in state:
            raise ValueError(
                f"{half}: parameter {path}: tensor {key!r} is missing "
                f"(model expects shape {expected[path]})"
            )
        value = _to_ours(np.asarray(state[key], np.float32), expected[path])
        if value is None or value.shape != expected[path]:
            raise ValueError(
                f"{half}: parameter {path}: tensor {key!r} has shape {tuple(state[key].shape)}, "
                f"which does not fit the model's shape {expected[path]}"
            )
        flat[path] = np.ascontiguousarray(value)
    return {"params": traverse_util.unflatten_dict(flat, sep="/")}


def load_openai_dvae(
    encoder_file: str | pathlib.Path,
    decoder_file: str | pathlib.Path,
    allow_pickle: bool = False,
) -> tuple[DVAEConfig, dict[str, Params]]:
    """(config, {"encoder": {"params": ...}, "decoder": {...}}) from two dall_e weight files."""
    states = {
        "encoder": read_state_dict(encoder_file, allow_pickle),
        "decoder": read_state_dict(decoder_file, allow_pickle),
    }
    config = config_from_state_dicts(states["encoder"], states["decoder"])
    return config, {half: params_from_state_dict(config, half, states[half]) for half in HALVES}


# ----------------------------------------------------------------------------- our checkpoints


def check_save_target(directory: str | pathlib.Path) -> epath.Path:
    """Where `save_dvae` may write: new, empty, or an earlier dVAE checkpoint (it replaces it)."""
    return checkpoints.check_save_target(directory, CONFIG_FILE, "dVAE")


def save_dvae(
    directory: str | pathlib.Path, config: DVAEConfig, variables: Mapping[str, Params]
) -> None:
    """Write `dvae_config.json` and `encoder/`, `decoder/` (orbax, `write_params`) under
    `directory`, through a temporary sibling renamed at the end (no half checkpoint is left)."""
    path = check_save_target(directory)
    tmp = temporary_sibling(path)
    for half in HALVES:
        write_params(tmp / half, variables[half])
    (tmp / CONFIG_FILE).write_text(json.dumps(config.to_dict(), indent=2))
    commit(tmp, path)


def read_dvae_config(file: pathlib.Path) -> DVAEConfig:
    """The DVAEConfig of a `dvae_config.json`; ValueError naming the file when it is not one."""
    try:
        return DVAEConfig.from_dict(read_json(file, "dVAE checkpoint"))
    except TypeError as error:
        raise ValueError(f"{file} does not describe a dVAE: {error}") from None


def load_dvae(directory: str | pathlib.Path) -> tuple[DVAEConfig, dict[str, Params]]:
    """(config, {"encoder": {"params": ...}, "decoder": {...}}) saved by `save_dvae` (numpy on
    the host); every shape is checked against the config."""
    path = location(directory)
    if not (path / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{path} is not a dVAE checkpoint: no {CONFIG_FILE}")
    config = read_dvae_config(path / CONFIG_FILE)
    variables = {}
    for half in HALVES:
        tree = read_params(path / half)
        stored = traverse_util.flatten_dict(tree.get("params", {}), sep="/")
        expected = param_shapes(config, half)
        for name in sorted(set(expected) | set(stored)):
            shape = tuple(stored[name].shape) if name in stored else None
            if expected.get(name) != shape:
                raise ValueError(
                    f"{half} parameter {name}: {CONFIG_FILE} expects shape {expected.get(name)}, "
                    f"{path / half} holds {shape} (None = absent)"
                )
        variables[half] = tree
    return config, variables


def num_params(variables: Mapping[str, Params]) -> dict[str, int]:
    return {half: sum(np.size(x) for x in jax.tree.leaves(variables[half])) for half in variables}


def convert_files(
    encoder_file: str | pathlib.Path,
    decoder_file: str | pathlib.Path,
    out: str | pathlib.Path,
    allow_pickle: bool = False,
) -> DVAEConfig:
    """Two dall_e weight files -> our dVAE checkpoint at `out`; returns the inferred config."""
    check_save_target(out)
    config, variables = load_openai_dvae(encoder_file, decoder_file, allow_pickle)
    save_dvae(out, config, variables)
    counts = num_params(variables)
    print(
        f"converted {encoder_file}, {decoder_file} -> {out}: encoder {counts['encoder']:,}, "
        f"decoder {counts['decoder']:,} parameters ({config})"
    )
    return config
