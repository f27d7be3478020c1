"""The directory a `Dalle` pipeline loads from (DALL·E, Ramesh et al. 2021): the transformer, its
caption BPE, the dVAE that turns its codes into images and the CLIP that reranks its samples.

    <dir>/unclip.json              {"format": 1, "kind": "dalle"}
    <dir>/clip/                    the reranking CLIP (`convert.hf_clip.save_clip`) + tokenizer/
    <dir>/dvae/                    the dVAE (`convert.dvae.save_dvae`: dvae_config.json,
                                   encoder/, decoder/)
    <dir>/transformer/stage.json   {"model": DalleConfig fields, "dtype": compute dtype,
                                   "sampling": {"temperature", "top_k", "top_p"}}
    <dir>/transformer/params/      orbax checkpoint of its (EMA) parameters
    <dir>/transformer/tokenizer/   the BPE its captions were read with (its training run's)
    <dir>/run.json                 the export's run record, with the transformer's training
                                   records ("stages": {"transformer": [records]})

The manifest, clip/ and stage.json are those of `pipelines.store`. `export_dalle_pipeline`
assembles the directory from the "dalle" trainer's workdir and the dVAE checkpoint it was trained
on, writing a temporary sibling that is renamed at the end:

    export_dalle_pipeline("workdirs/dalle/pipeline", clip_dir="workdirs/demo/clip/clip",
                          dalle=(config, "workdirs/dalle_shapes"))
"""

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

from etils import epath

from unclip_jax.convert import dvae as dvae_checkpoint
from unclip_jax.models.dalle import sized_config
from unclip_jax.models.dvae import DVAEConfig
from unclip_jax.pipelines.store import (
    CLIP_DIR,
    CLIP_FILES,
    DALLE_KIND,
    PARAMS_DIR,
    STAGE_FILE,
    TOKENIZER_DIR,
    StageFiles,
    check_kind,
    check_stage_files,
    finish_directory,
    read_manifest,
    read_stage,
    start_directory,
    write_stage,
)
from unclip_jax.storage import run_record
from unclip_jax.storage.checkpoints import restore_ema_params
from unclip_jax.storage.json_files import jsonable
from unclip_jax.storage.tokenizers import load_tokenizer, save_tokenizer
from unclip_jax.text.tokenizer import META_FILE, Tokenizer

DVAE_DIR, TRANSFORMER = "dvae", "transformer"
DVAE_FILES = (dvae_checkpoint.CONFIG_FILE, *dvae_checkpoint.HALVES)
TRANSFORMER_FILES = (STAGE_FILE, PARAMS_DIR, f"{TOKENIZER_DIR}/{META_FILE}")
# The paper samples at temperature 1 without truncation (§2.3); a training config's `sampling`
# section may set others.
DEFAULT_SAMPLING = {"temperature": 1.0, "top_k": 0, "top_p": 1.0}


@dataclasses.dataclass(frozen=True)
class DalleFiles:
    """A DALL·E pipeline directory as read, every file named in its errors."""

    clip_dir: epath.Path
    dvae: tuple[DVAEConfig, dict[str, Any]]  # (config, {"encoder": {"params"}, "decoder": ...})
    transformer: StageFiles
    tokenizer_dir: epath.Path


def check_dalle_dir(directory: str | os.PathLike) -> epath.Path:
    """The directory after checking its manifest (kind "dalle") and that every part is present;
    one error naming the directory, the file or the first missing part."""
    path, manifest = read_manifest(directory)
    check_kind(path, manifest, DALLE_KIND)
    for stage, required in (
        (CLIP_DIR, CLIP_FILES),
        (DVAE_DIR, DVAE_FILES),
        (TRANSFORMER, TRANSFORMER_FILES),
    ):
        check_stage_files(path, stage, required)
    return path


def read_dalle_pipeline(directory: str | os.PathLike) -> DalleFiles:
    """The parts of a DALL·E pipeline directory (see the module docstring), checked as read."""
    path = check_dalle_dir(directory)
    return DalleFiles(
        clip_dir=path / CLIP_DIR,
        dvae=dvae_checkpoint.load_dvae(path / DVAE_DIR),
        transformer=read_stage(path / TRANSFORMER, TRANSFORMER),
        tokenizer_dir=path / TRANSFORMER / TOKENIZER_DIR,
    )


def transformer_settings(config: Any, tokenizer: Tokenizer, dvae: DVAEConfig) -> dict:
    """stage.json of the transformer from its training config (`configs/dalle_shapes.py`'s
    sections), the run's tokenizer and the dVAE it was trained on (the sizes they set)."""
    fields = {k: v for k, v in jsonable(config.model).items() if k != "dtype"}
    model = sized_config(
        fields, tokenizer.vocab_size, tokenizer.context_length, dvae, int(config.data.image_size)
    )
    return {
        "model": dataclasses.asdict(model),
        "dtype": str(config.model.get("dtype", "float32")),
        "sampling": {**DEFAULT_SAMPLING, **jsonable(config.get("sampling", {}))},
    }


def write_dalle_pipeline(
    out_dir: str | os.PathLike,
    *,
    clip_dir: str | os.PathLike,
    dvae: tuple[DVAEConfig, Mapping[str, Any]],
    transformer: tuple[dict, Any],
    tokenizer: Tokenizer,
    stage_records: Mapping[str, list[dict]] | None = None,
) -> epath.Path:
    """Writes a DALL·E pipeline directory from the dVAE's (config, variables), the
    transformer's (stage.json settings, params), its tokenizer and a saved CLIP directory (with
    its tokenizer/); atomic: a temporary sibling renamed at the end."""
    out, tmp = start_directory(out_dir, clip_dir)
    dvae_checkpoint.save_dvae(tmp / DVAE_DIR, *dvae)
    write_stage(tmp / TRANSFORMER, *transformer)
    save_tokenizer(tokenizer, tmp / TRANSFORMER / TOKENIZER_DIR)
    return finish_directory(tmp, out, DALLE_KIND, {}, stage_records)


def export_dalle_pipeline(
    out_dir: str | os.PathLike,
    *,
    clip_dir: str | os.PathLike,
    dalle: tuple[Any, str | os.PathLike],
    dvae_dir: str | os.PathLike | None = None,
    tokenizer_dir: str = "tokenizer",
) -> epath.Path:
    """A DALL·E pipeline directory from the "dalle" trainer's (config, workdir): the EMA
    parameters of the workdir's latest complete checkpoint, the run's BPE (`tokenizer_dir` in the
    workdir, `train/dalle_task.py`), and the dVAE checkpoint at `dvae_dir` (default: the one it
    was trained on, `config.dvae_dir`); `clip_dir` is the saved CLIP that reranks."""
    config, workdir = dalle
    workdir = epath.Path(workdir)
    dvae_dir = dvae_dir or config.get("dvae_dir")
    if not dvae_dir:
        raise ValueError(
            "the DALL·E config names no dVAE (dvae_dir is empty): give dvae_dir, the dVAE "
            "checkpoint the transformer was trained on"
        )
    dvae_config, variables = dvae_checkpoint.load_dvae(dvae_dir)
    tokenizer = load_tokenizer(workdir / tokenizer_dir)
    return write_dalle_pipeline(
        out_dir,
        clip_dir=clip_dir,
        dvae=(dvae_config, variables),
        transformer=(
            transformer_settings(config, tokenizer, dvae_config),
            restore_ema_params(workdir / "checkpoints"),
        ),
        tokenizer=tokenizer,
        stage_records={TRANSFORMER: run_record.read_records(workdir)},
    )
