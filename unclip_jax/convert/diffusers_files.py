"""Reading one component directory of a diffusers pipeline: its JSON files and its weights.

Weights are `*.safetensors` (sharded through an index or not) or PyTorch `*.bin`, read as float32
numpy arrays; every error names the component.
"""

import pathlib

import numpy as np

from unclip_jax.storage.json_files import read_json

_WEIGHT_NAMES = ("diffusion_pytorch_model", "model", "pytorch_model")


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
            shards = sorted(set(read_json(index, component)["weight_map"].values()))
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
