"""The directory an `UnCLIP` pipeline loads from: every stage, the tokenizer and their settings.

    <dir>/unclip.json           {"format": 1, "upsamplers": N}
    <dir>/clip/                 the conditioning CLIP (`convert.hf_clip.save_clip`) + tokenizer/
    <dir>/prior/stage.json      {"model": DiffusionPrior fields, "diffusion": {...},
                                 "normalizer": {"kind", "mean", "std"}}
    <dir>/decoder/stage.json    {"image_size", "model": Decoder section, "diffusion": {...}}
    <dir>/upsampler_<k>/stage.json  {"low_res", "high_res", "model": Upsampler section,
                                 "diffusion": {...}}
    <dir>/<stage>/params/       orbax checkpoint of the stage's (EMA) parameters

`diffusion` sections take the training configs' names: schedule, train_steps, sample_steps,
prediction ("eps", "x0", "v"), learned_variance. `export_pipeline` assembles the directory from
stage workdirs (EMA parameters of their latest checkpoint) and their configs, writing to a
temporary sibling first so that an interrupted export leaves nothing half-written.
"""

import dataclasses
import json
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from unclip_jax.sampling.settings import DiffusionSettings  # noqa: F401 (stage.json's "diffusion")
from unclip_jax.storage.checkpoints import read_params, restore_ema_params, write_params
from unclip_jax.storage.json_files import read_json

MANIFEST = "unclip.json"
STAGE_FILE = "stage.json"
PARAMS_DIR = "params"
CLIP_DIR = "clip"
TOKENIZER_DIR = "tokenizer"
PRIOR, DECODER = "prior", "decoder"
FORMAT = 1


def upsampler_name(index: int) -> str:
    return f"upsampler_{index}"


def _jsonable(value: Any) -> Any:
    """ConfigDict / tuple / numpy values as plain JSON types."""
    if hasattr(value, "to_dict"):
        value = value.to_dict()
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def write_stage(directory: Path, settings: Mapping[str, Any], params: Any) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / STAGE_FILE).write_text(json.dumps(_jsonable(settings), indent=2))
    write_params(directory / PARAMS_DIR, params)


def stage_names(num_upsamplers: int) -> list[str]:
    return [CLIP_DIR, PRIOR, DECODER] + [upsampler_name(k) for k in range(num_upsamplers)]


@dataclasses.dataclass(frozen=True)
class StageFiles:
    """One stage directory as read: its stage.json (checked to hold the sections its kind needs)
    and its parameters (host arrays)."""

    directory: Path
    settings: dict
    params: Any


@dataclasses.dataclass(frozen=True)
class PipelineFiles:
    """A pipeline directory as read, every file named in its errors."""

    clip_dir: Path
    prior: StageFiles
    decoder: StageFiles
    upsamplers: list[StageFiles]


# The sections each kind of stage.json holds.
STAGE_SECTIONS = {
    PRIOR: ("model", "diffusion", "normalizer"),
    DECODER: ("image_size", "model", "diffusion"),
    "upsampler": ("low_res", "high_res", "model", "diffusion"),
}


def check_pipeline_dir(directory: str | Path) -> tuple[Path, dict]:
    """(path, manifest) after checking the manifest and that every stage is present; one error
    naming the directory, the file or the first missing stage."""
    path = Path(directory)
    if path.is_file():
        raise NotADirectoryError(f"checkpoint {str(path)!r} is a file, not a pipeline directory")
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint directory {str(path)!r} does not exist")
    if not (path / MANIFEST).is_file():
        raise FileNotFoundError(
            f"{str(path)!r} is not an unclip checkpoint directory: {MANIFEST} is missing"
        )
    manifest = read_json(path / MANIFEST)
    if manifest.get("format") != FORMAT:
        raise ValueError(
            f"{path / MANIFEST}: format must be {FORMAT}, got {manifest.get('format')}"
        )
    upsamplers = manifest.get("upsamplers", 0)
    if not isinstance(upsamplers, int) or isinstance(upsamplers, bool) or upsamplers < 0:
        raise ValueError(f"{path / MANIFEST}: upsamplers must be a count >= 0, got {upsamplers!r}")
    for stage in stage_names(upsamplers):
        required = (
            ["clip_config.json", PARAMS_DIR, f"{TOKENIZER_DIR}/unclip_tokenizer.json"]
            if stage == CLIP_DIR
            else [STAGE_FILE, PARAMS_DIR]
        )
        missing = [name for name in required if not (path / stage / name).exists()]
        if missing:
            raise FileNotFoundError(
                f"checkpoint directory {str(path)!r} is missing stage {stage!r} "
                f"(no {', '.join(f'{stage}/{m}' for m in missing)})"
            )
    return path, manifest


def read_stage(directory: Path, kind: str) -> StageFiles:
    """One stage directory of `kind` (prior, decoder or upsampler), its stage.json checked to
    hold that kind's sections."""
    stage_file = directory / STAGE_FILE
    settings = read_json(stage_file)
    missing = [name for name in STAGE_SECTIONS[kind] if name not in settings]
    if missing:
        raise ValueError(f"{stage_file}: missing {', '.join(map(repr, missing))}")
    if not isinstance(settings["model"], dict):
        raise ValueError(f"{stage_file}: 'model' must be an object, got {settings['model']!r}")
    return StageFiles(directory, settings, read_params(directory / PARAMS_DIR))


def read_pipeline(directory: str | Path) -> PipelineFiles:
    """Every stage of a pipeline directory (see the module docstring), checked as it is read."""
    path, manifest = check_pipeline_dir(directory)
    return PipelineFiles(
        clip_dir=path / CLIP_DIR,
        prior=read_stage(path / PRIOR, PRIOR),
        decoder=read_stage(path / DECODER, DECODER),
        upsamplers=[
            read_stage(path / upsampler_name(k), "upsampler")
            for k in range(manifest.get("upsamplers", 0))
        ],
    )


def _config_section(config: Any, name: str, default: Any = None) -> Any:
    return _jsonable(config.get(name, default))


def prior_settings(config: Any, normalizer_file: Path) -> dict:
    """stage.json of a diffusion prior from its training config and saved normaliser."""
    return {
        "model": _config_section(config, "model"),
        "diffusion": _config_section(config, "diffusion"),
        "normalizer": read_json(normalizer_file),
    }


def decoder_settings(config: Any) -> dict:
    return {
        "image_size": int(config.image_size),
        "model": _config_section(config, "model"),
        "diffusion": _config_section(config, "diffusion"),
    }


def upsampler_settings(config: Any) -> dict:
    return {
        "low_res": int(config.low_res),
        "high_res": int(config.high_res),
        "model": _config_section(config, "model"),
        "diffusion": _config_section(config, "diffusion"),
    }


def write_pipeline(
    out_dir: str | Path,
    *,
    clip_dir: str | Path,
    prior: tuple[dict, Any],
    decoder: tuple[dict, Any],
    upsamplers: Sequence[tuple[dict, Any]] = (),
) -> Path:
    """Writes a pipeline directory from (settings, params) per stage and a saved CLIP directory
    (with its tokenizer/); atomic: a temporary sibling renamed at the end."""
    out = Path(out_dir).absolute()
    clip_dir = Path(clip_dir)
    if not (clip_dir / TOKENIZER_DIR).is_dir():
        raise FileNotFoundError(f"CLIP directory {str(clip_dir)!r} has no {TOKENIZER_DIR}/")
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    shutil.copytree(clip_dir, tmp / CLIP_DIR)
    write_stage(tmp / PRIOR, *prior)
    write_stage(tmp / DECODER, *decoder)
    for index, upsampler in enumerate(upsamplers):
        write_stage(tmp / upsampler_name(index), *upsampler)
    (tmp / MANIFEST).write_text(json.dumps({"format": FORMAT, "upsamplers": len(upsamplers)}))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def export_pipeline(
    out_dir: str | Path,
    *,
    clip_dir: str | Path,
    prior: tuple[Any, str | Path],
    decoder: tuple[Any, str | Path],
    upsamplers: Sequence[tuple[Any, str | Path]] = (),
    normalizer_file: str = "embedding_normalizer.json",
) -> Path:
    """A pipeline directory from trained stages: (config, workdir) per stage, whose EMA
    parameters are those of the workdir's latest complete checkpoint; the prior's workdir also
    holds its embedding normaliser (`normalizer_file`)."""

    def ema(workdir: str | Path) -> Any:
        return restore_ema_params(Path(workdir) / "checkpoints")

    prior_config, prior_workdir = prior
    decoder_config, decoder_workdir = decoder
    return write_pipeline(
        out_dir,
        clip_dir=clip_dir,
        prior=(
            prior_settings(prior_config, Path(prior_workdir) / normalizer_file),
            ema(prior_workdir),
        ),
        decoder=(decoder_settings(decoder_config), ema(decoder_workdir)),
        upsamplers=[(upsampler_settings(c), ema(w)) for c, w in upsamplers],
    )
