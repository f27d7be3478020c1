"""The directory an `UnCLIP` pipeline loads from: every stage, the tokenizer and their settings.

    <dir>/unclip.json           {"format": 1, "kind": "unclip", "upsamplers": N,
                                 "priors": ["prior", "ar_prior"]}
    <dir>/clip/                 the conditioning CLIP (`convert.hf_clip.save_clip`) + tokenizer/
    <dir>/prior/stage.json      {"model": DiffusionPrior fields, "diffusion": {...},
                                 "normalizer": {"kind", "mean", "std"}}
    <dir>/ar_prior/stage.json   {"model": ARPrior fields, "sampling": {"guidance_scale",
                                 "candidates", "temperature", "top_p", "dot_sampling"}}
    <dir>/ar_prior/quantizers.npz  its PCA, code and z_i·z_t buckets (`models.pca_quantizer`)
    <dir>/decoder/stage.json    {"image_size", "model": Decoder section, "diffusion": {...}}
    <dir>/upsampler_<k>/stage.json  {"low_res", "high_res", "model": Upsampler section,
                                 "diffusion": {...}}
    <dir>/<stage>/params/       orbax checkpoint of the stage's (EMA) parameters
    <dir>/run.json              the export's run record, with the stages' training records
                                 (`storage.run_record`; "stages": {stage name: [records]})

A directory holds the diffusion prior (prior/), the autoregressive one (ar_prior/, §2.1) or both,
as "priors" lists; a manifest without "priors" (written before the AR prior was a stage) holds
prior/ alone. The manifest's "kind" tells the pipelines apart: "unclip" (this layout; a manifest
without it was written before there were others) or "dalle" (`pipelines.dalle_store`, which
shares the manifest, clip/ and stage.json files). `diffusion` sections take the training
configs' names: schedule, train_steps, sample_steps, prediction ("eps", "x0", "v"),
learned_variance. `export_pipeline` assembles the directory from stage workdirs (EMA parameters
of their latest checkpoint) and their configs, writing to a temporary sibling first so that an
interrupted export leaves nothing half-written. Directories and workdirs may be local or URIs
(gs://, `storage.locations`).
"""

import dataclasses
import json
import os
import zipfile
from collections.abc import Mapping, Sequence
from typing import Any

from etils import epath

from unclip_jax.diffusion import analytic
from unclip_jax.models.pca_quantizer import ARQuantizers, load_quantizers, save_quantizers
from unclip_jax.nn.precision import cast_floats, compute_dtype
from unclip_jax.sampling.settings import DiffusionSettings
from unclip_jax.storage import run_record
from unclip_jax.storage.checkpoints import read_params, restore_ema_params, write_params
from unclip_jax.storage.json_files import jsonable, read_json
from unclip_jax.storage.locations import commit, copy_tree, location, temporary_sibling

MANIFEST = "unclip.json"
STAGE_FILE = "stage.json"
PARAMS_DIR = "params"
CLIP_DIR = "clip"
TOKENIZER_DIR = "tokenizer"
PRIOR, AR_PRIOR, DECODER = "prior", "ar_prior", "decoder"
QUANTIZERS_FILE = "quantizers.npz"  # beside an AR prior's params
CLIP_FILES = ("clip_config.json", PARAMS_DIR, f"{TOKENIZER_DIR}/unclip_tokenizer.json")
# The priors a pipeline may hold, by the name `UnCLIP.load(prior=...)` and `--prior` take.
PRIOR_KINDS = {"diffusion": PRIOR, "ar": AR_PRIOR}
FORMAT = 1
# The pipelines a directory may hold, by its manifest's "kind" (absent: "unclip"): unCLIP's
# (this module's layout) and DALL·E's (`pipelines.dalle_store`).
UNCLIP_KIND, DALLE_KIND = "unclip", "dalle"
KIND_NAMES = {UNCLIP_KIND: "an unCLIP", DALLE_KIND: "a DALL·E"}


def upsampler_name(index: int) -> str:
    return f"upsampler_{index}"


def write_stage(directory: epath.Path, settings: Mapping[str, Any], params: Any) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / STAGE_FILE).write_text(json.dumps(jsonable(settings), indent=2))
    write_params(directory / PARAMS_DIR, params)


def stage_names(num_upsamplers: int, priors: Sequence[str] = (PRIOR,)) -> list[str]:
    return [CLIP_DIR, *priors, DECODER] + [upsampler_name(k) for k in range(num_upsamplers)]


@dataclasses.dataclass(frozen=True)
class StageFiles:
    """One stage directory as read: its stage.json (checked to hold the sections its kind needs)
    and its parameters (host arrays)."""

    directory: epath.Path
    settings: dict
    params: Any

    def computing_in(self, dtype: str | None) -> "StageFiles":
        """The stage with its model computing in `dtype` (a name of `nn.precision`'s
        COMPUTE_DTYPES; None: as saved) and its floating parameters cast to it."""
        if dtype is None:
            return self
        settings = {**self.settings, "model": {**self.settings["model"], "dtype": dtype}}
        params = cast_floats(self.params, compute_dtype(dtype))
        return dataclasses.replace(self, settings=settings, params=params)


@dataclasses.dataclass(frozen=True)
class PipelineFiles:
    """A pipeline directory as read, every file named in its errors."""

    clip_dir: epath.Path
    prior: StageFiles  # the prior asked for (`prior_kind`)
    decoder: StageFiles
    upsamplers: list[StageFiles]
    prior_kind: str = "diffusion"  # a key of PRIOR_KINDS


# The sections each kind of stage.json holds.
STAGE_SECTIONS = {
    PRIOR: ("model", "diffusion", "normalizer"),
    AR_PRIOR: ("model", "sampling"),
    DECODER: ("image_size", "model", "diffusion"),
    "upsampler": ("low_res", "high_res", "model", "diffusion"),
    "transformer": ("model", "sampling"),  # DALL·E's (`pipelines.dalle_store`)
}


def read_manifest(directory: str | os.PathLike) -> tuple[epath.Path, dict]:
    """(path, manifest) of a pipeline directory of any kind, its format and kind checked; one
    error naming the directory or the file."""
    path = epath.Path(directory)
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
    kind = manifest.get("kind", UNCLIP_KIND)
    if kind not in KIND_NAMES:
        raise ValueError(
            f"{path / MANIFEST}: kind must be one of {sorted(KIND_NAMES)}, got {kind!r}"
        )
    return path, {**manifest, "kind": kind}


def pipeline_kind(directory: str | os.PathLike) -> str:
    """The kind of pipeline a directory holds, a key of KIND_NAMES, from its manifest."""
    return read_manifest(directory)[1]["kind"]


def check_kind(path: epath.Path, manifest: dict, kind: str) -> None:
    """One error naming the directory and what it holds when that is not a `kind` pipeline."""
    if manifest["kind"] != kind:
        raise ValueError(
            f"checkpoint directory {str(path)!r} holds {KIND_NAMES[manifest['kind']]} pipeline "
            f"({MANIFEST} kind {manifest['kind']!r}), not {KIND_NAMES[kind]} one"
        )


def check_stage_files(path: epath.Path, stage: str, required: Sequence[str]) -> None:
    """One error naming the directory, the stage and its first missing files."""
    missing = [name for name in required if not (path / stage / name).exists()]
    if missing:
        raise FileNotFoundError(
            f"checkpoint directory {str(path)!r} is missing stage {stage!r} "
            f"(no {', '.join(f'{stage}/{m}' for m in missing)})"
        )


def check_pipeline_dir(directory: str | os.PathLike) -> tuple[epath.Path, dict]:
    """(path, manifest) after checking the manifest and that every stage is present; one error
    naming the directory, the file or the first missing stage."""
    path, manifest = read_manifest(directory)
    check_kind(path, manifest, UNCLIP_KIND)
    upsamplers = manifest.get("upsamplers", 0)
    if not isinstance(upsamplers, int) or isinstance(upsamplers, bool) or upsamplers < 0:
        raise ValueError(f"{path / MANIFEST}: upsamplers must be a count >= 0, got {upsamplers!r}")
    for stage in stage_names(upsamplers, held_priors(path, manifest)):
        required = [STAGE_FILE, PARAMS_DIR] + ([QUANTIZERS_FILE] if stage == AR_PRIOR else [])
        if stage == CLIP_DIR:
            required = CLIP_FILES
        check_stage_files(path, stage, required)
    return path, manifest


def held_priors(path: epath.Path, manifest: dict) -> list[str]:
    """The prior stage directories the manifest lists ("prior" where it lists none)."""
    priors = manifest.get("priors", [PRIOR])
    known = list(PRIOR_KINDS.values())
    if (
        not isinstance(priors, list)
        or not priors
        or not all(isinstance(name, str) for name in priors)
        or len(set(priors)) != len(priors)
        or not set(priors) <= set(known)
    ):
        raise ValueError(
            f"{path / MANIFEST}: priors must be a list of distinct names among {known}, "
            f"got {priors!r}"
        )
    return priors


def prior_kinds(directory: str | os.PathLike) -> list[str]:
    """The kinds of prior (keys of PRIOR_KINDS) a pipeline directory holds."""
    return _held_kinds(*check_pipeline_dir(directory))


def _held_kinds(path: epath.Path, manifest: dict) -> list[str]:
    held = held_priors(path, manifest)
    return [kind for kind, stage in PRIOR_KINDS.items() if stage in held]


def choose_prior(path: epath.Path, manifest: dict, kind: str | None) -> str:
    """The kind of prior to load (a key of PRIOR_KINDS): `kind`, or by default the diffusion
    prior where the directory holds one; one error naming the directory and the priors it
    holds when it lacks the one asked for."""
    held = _held_kinds(path, manifest)
    if kind is None:
        return held[0]
    if kind not in PRIOR_KINDS:
        raise ValueError(f"prior must be one of {sorted(PRIOR_KINDS)}, got {kind!r}")
    if kind not in held:
        raise ValueError(
            f"checkpoint directory {str(path)!r} holds no {kind!r} prior; it holds: "
            f"{', '.join(map(repr, held))}"
        )
    return kind


def read_stage(directory: epath.Path, kind: str) -> StageFiles:
    """One stage directory of `kind` (prior, ar_prior, decoder or upsampler), its stage.json
    checked to hold that kind's sections."""
    stage_file = directory / STAGE_FILE
    settings = read_json(stage_file)
    missing = [name for name in STAGE_SECTIONS[kind] if name not in settings]
    if missing:
        raise ValueError(f"{stage_file}: missing {', '.join(map(repr, missing))}")
    if not isinstance(settings["model"], dict):
        raise ValueError(f"{stage_file}: 'model' must be an object, got {settings['model']!r}")
    return StageFiles(directory, settings, read_params(directory / PARAMS_DIR))


def read_pipeline(
    directory: str | os.PathLike, prior: str | None = None, dtype: str | None = None
) -> PipelineFiles:
    """The stages of a pipeline directory (see the module docstring) with the prior of kind
    `prior` ("diffusion" or "ar"; None: the diffusion prior where held), checked as they are
    read, each computing in `dtype` (see `StageFiles.computing_in`); a prior the directory lacks
    is refused before any parameters are read."""
    path, manifest = check_pipeline_dir(directory)
    kind = choose_prior(path, manifest, prior)
    stage = PRIOR_KINDS[kind]

    def read(name: str, stage_kind: str) -> StageFiles:
        return read_stage(path / name, stage_kind).computing_in(dtype)

    return PipelineFiles(
        clip_dir=path / CLIP_DIR,
        prior=read(stage, stage),
        decoder=read(DECODER, DECODER),
        upsamplers=[
            read(upsampler_name(k), "upsampler") for k in range(manifest.get("upsamplers", 0))
        ],
        prior_kind=kind,
    )


def read_ar_quantizers(stage: StageFiles) -> ARQuantizers:
    """The quantizers beside an AR prior's parameters; a damaged file is one error naming it."""
    path = stage.directory / QUANTIZERS_FILE
    try:
        return load_quantizers(path)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as error:
        raise ValueError(f"{path}: not the AR prior's quantizers ({error})") from None


def _config_section(config: Any, name: str, default: Any = None) -> Any:
    return jsonable(config.get(name, default))


def prior_settings(config: Any, normalizer_file: str | os.PathLike) -> dict:
    """stage.json of a diffusion prior from its training config and saved normaliser, with the
    Γ table its trainer saved beside the normaliser ("analytic", `diffusion.analytic.TABLE_FILE`)
    where there is one: a prior sampled with variance "analytic" needs it."""
    settings = {
        "model": _config_section(config, "model"),
        "diffusion": _config_section(config, "diffusion"),
        "normalizer": read_json(normalizer_file),
    }
    table_file = epath.Path(normalizer_file).with_name(analytic.TABLE_FILE)
    if table_file.is_file():
        settings["analytic"] = read_json(table_file)
    elif DiffusionSettings.from_dict(settings["diffusion"]).var_type == "analytic":
        raise FileNotFoundError(
            f"{table_file} is missing: the prior samples with variance 'analytic' and its trainer "
            "writes that Γ table at the end of training"
        )
    return settings


def ar_prior_settings(config: Any, quantizers: ARQuantizers) -> dict:
    """stage.json of an AR prior from its training config (`configs/ar_prior_demo.py`'s
    sections) and the quantizers it was trained with (the code and bucket counts)."""
    guidance, sampling = config.guidance, config.get("sampling", {})
    return {
        "model": {
            **_config_section(config, "model"),
            "num_codes": quantizers.pca.num_components,
            "num_buckets": quantizers.pca.num_buckets,
            "num_dot_buckets": quantizers.dot.num_buckets,
        },
        "sampling": {
            "guidance_scale": float(guidance.get("scale", 1.0)),
            "candidates": int(guidance.get("candidates", 1)),
            "temperature": float(sampling.get("temperature", 1.0)),
            "top_p": float(sampling.get("top_p", 1.0)),
            "dot_sampling": str(sampling.get("dot_sampling", "top_half")),
        },
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
    out_dir: str | os.PathLike,
    *,
    clip_dir: str | os.PathLike,
    prior: tuple[dict, Any] | None = None,
    decoder: tuple[dict, Any],
    upsamplers: Sequence[tuple[dict, Any]] = (),
    ar_prior: tuple[dict, Any, ARQuantizers] | None = None,
    stage_records: Mapping[str, list[dict]] | None = None,
) -> epath.Path:
    """Writes a pipeline directory from (settings, params) per stage (the AR prior's with its
    quantizers) and a saved CLIP directory (with its tokenizer/); at least one prior; atomic: a
    temporary sibling renamed at the end. Its run.json records this export and, by stage name,
    `stage_records` (the run records of the workdirs the stages were trained in)."""
    priors = [name for name, stage in ((PRIOR, prior), (AR_PRIOR, ar_prior)) if stage]
    if not priors:
        raise ValueError("a pipeline needs a prior: give prior, ar_prior or both")
    out, tmp = start_directory(out_dir, clip_dir)
    if prior:
        write_stage(tmp / PRIOR, *prior)
    if ar_prior:
        write_stage(tmp / AR_PRIOR, *ar_prior[:2])
        save_quantizers(ar_prior[2], tmp / AR_PRIOR / QUANTIZERS_FILE)
    write_stage(tmp / DECODER, *decoder)
    for index, upsampler in enumerate(upsamplers):
        write_stage(tmp / upsampler_name(index), *upsampler)
    manifest = {"upsamplers": len(upsamplers), "priors": priors}
    return finish_directory(tmp, out, UNCLIP_KIND, manifest, stage_records)


def start_directory(
    out_dir: str | os.PathLike, clip_dir: str | os.PathLike
) -> tuple[epath.Path, epath.Path]:
    """(`out_dir` as a location, a fresh temporary sibling to write the pipeline into) with a
    copy of the saved CLIP directory `clip_dir` (its tokenizer/ required) as the sibling's clip/."""
    out = location(out_dir)
    clip_dir = epath.Path(clip_dir)
    if not (clip_dir / TOKENIZER_DIR).is_dir():
        raise FileNotFoundError(f"CLIP directory {str(clip_dir)!r} has no {TOKENIZER_DIR}/")
    tmp = temporary_sibling(out)
    copy_tree(clip_dir, tmp / CLIP_DIR)
    return out, tmp


def finish_directory(
    tmp: epath.Path,
    out: epath.Path,
    kind: str,
    manifest: Mapping[str, Any],
    stage_records: Mapping[str, list[dict]] | None = None,
) -> epath.Path:
    """Writes the manifest of a `kind` pipeline and the run.json (this export's record with
    `stage_records` by stage name) into `tmp`, then renames it to `out`, replacing it."""
    manifest = {"format": FORMAT, "kind": kind, **manifest}
    (tmp / MANIFEST).write_text(json.dumps(manifest))
    record = {**run_record.run_record(), "stages": dict(stage_records or {})}
    (tmp / run_record.RECORD_FILE).write_text(run_record.records_text([record]))
    return commit(tmp, out)


def export_pipeline(
    out_dir: str | os.PathLike,
    *,
    clip_dir: str | os.PathLike,
    prior: tuple[Any, str | os.PathLike] | None = None,
    decoder: tuple[Any, str | os.PathLike],
    upsamplers: Sequence[tuple[Any, str | os.PathLike]] = (),
    ar_prior: tuple[Any, str | os.PathLike] | None = None,
    normalizer_file: str = "embedding_normalizer.json",
    quantizers_file: str = "ar_quantizers.npz",
) -> epath.Path:
    """A pipeline directory from trained stages: (config, workdir) per stage, whose EMA
    parameters are those of the workdir's latest complete checkpoint; the diffusion prior's
    workdir also holds its embedding normaliser (`normalizer_file`), the AR prior's its
    quantizers (`quantizers_file`, `train/ar_prior_task.py`). The directory's run.json carries
    each workdir's run records."""

    def ema(workdir: str | os.PathLike) -> Any:
        return restore_ema_params(epath.Path(workdir) / "checkpoints")

    diffusion = ar = None
    if prior:
        prior_config, prior_workdir = prior
        settings = prior_settings(prior_config, epath.Path(prior_workdir) / normalizer_file)
        diffusion = (settings, ema(prior_workdir))
    if ar_prior:
        ar_config, ar_workdir = ar_prior
        quantizers = load_quantizers(epath.Path(ar_workdir) / quantizers_file)
        ar = (ar_prior_settings(ar_config, quantizers), ema(ar_workdir), quantizers)
    decoder_config, decoder_workdir = decoder
    workdirs = {PRIOR: prior, AR_PRIOR: ar_prior, DECODER: decoder}
    workdirs.update({upsampler_name(k): stage for k, stage in enumerate(upsamplers)})
    records = {name: run_record.read_records(stage[1]) for name, stage in workdirs.items() if stage}
    return write_pipeline(
        out_dir,
        clip_dir=clip_dir,
        prior=diffusion,
        decoder=(decoder_settings(decoder_config), ema(decoder_workdir)),
        upsamplers=[(upsampler_settings(c), ema(w)) for c, w in upsamplers],
        ar_prior=ar,
        stage_records=records,
    )
