"""The study's trained stages and pipelines (`configs/study.py`): per conditioning CLIP c, its
embeddings, the decoder reading z_i and the caption, GLIDE's decoder, and per training seed s the
two priors, and once DALL·E's dVAE and transformer; then, for the arms that sample them, unCLIP's
pipelines per (c, s) (one with each prior), GLIDE's per c and DALL·E's per c (CLIP c reranks).
An arm waits only for the stages it reads (`needed_stages`), so the study goes arm by arm.

    <workdir>/data, score_clip                       read by every arm
    <workdir>/dvae, dalle                            DALL·E's
    <workdir>/clip_c{c}, embeddings_c{c}, decoder_c{c}, glide_decoder_c{c}
    <workdir>/prior_c{c}_s{s}, ar_prior_c{c}_s{s}
    <workdir>/pipelines/unclip_c{c}_s{s}, unclip_ar_c{c}_s{s}, glide_c{c}, dalle_c{c}
"""

import functools
import json
import shutil
from pathlib import Path

import ml_collections

from unclip_jax.demo import stages

SPLITS = {"train": "train", "test": "test"}  # embeddings folder -> source split


def clip_name(c: int) -> str:
    return f"clip_c{c}"


def clip_export(workdir: Path, c: int) -> Path:
    """The CLIP (converted layout and tokenizer) that stage clip_c{c} leaves."""
    from unclip_jax.train import clip_task

    return workdir / clip_name(c) / clip_task.EXPORT_DIR


def score_clip_dir(workdir: Path) -> Path:
    from unclip_jax.train import clip_task

    return workdir / "score_clip" / clip_task.EXPORT_DIR


def _section(config: ml_collections.ConfigDict, name: str, seed: int) -> ml_collections.ConfigDict:
    copy = stages.section(config, name)
    copy.seed = seed
    return copy


def sections(config: ml_collections.ConfigDict, workdir: Path) -> dict:
    """Each trained stage's config by stage name, wired to the stages before it."""
    from unclip_jax.train import dvae_task

    out = {name: stages.section(config, name) for name in ("score_clip", "dvae", "dalle")}
    out["dalle"].dvae_dir = str(workdir / "dvae" / dvae_task.EXPORT_DIR)
    for c in config.clip_seeds:
        out[clip_name(c)] = _section(config, "clip", seed=c)
        # unCLIP's decoders differ by the embeddings of their CLIP; GLIDE's drops every embedding,
        # so its replicate per CLIP is its own training seed.
        for name, seed in (("decoder", 0), ("glide_decoder", c)):
            decoder = _section(config, name, seed=seed)
            decoder.clip_dir = str(clip_export(workdir, c))
            out[f"{name}_c{c}"] = decoder
        for s in config.seeds:
            for name in ("prior", "ar_prior"):
                prior = _section(config, name, seed=s)
                prior.data.train_dir = str(workdir / f"embeddings_c{c}" / "train")
                prior.data.eval_dir = str(workdir / f"embeddings_c{c}" / "test")
                out[f"{name}_c{c}_s{s}"] = prior
    return out


def steps(config: ml_collections.ConfigDict, workdir: Path) -> dict[str, stages.StageFn]:
    """Every stage in order, each a function of its directory."""
    configs = sections(config, workdir)
    out = {"data": stages.shapes_data(config)}
    out |= {name: stages.trained(configs[name]) for name in ("score_clip", "dvae", "dalle")}
    for c in config.clip_seeds:
        out[clip_name(c)] = stages.trained(configs[clip_name(c)])
        decoder = configs[f"decoder_c{c}"]
        out[f"embeddings_c{c}"] = stages.embedded(clip_export(workdir, c), decoder.data, SPLITS)
        for s in config.seeds:
            for name in ("prior", "ar_prior"):
                out[f"{name}_c{c}_s{s}"] = stages.trained(configs[f"{name}_c{c}_s{s}"])
        for name in ("decoder", "glide_decoder"):
            out[f"{name}_c{c}"] = stages.trained(configs[f"{name}_c{c}"])
    return out


def arm_stages(arm: dict, c: int, s: int) -> list[str]:
    """The trained stages an arm's samples come from at replicate (c, s): the conditioning CLIP
    and what reads it, or DALL·E's dVAE and transformer (with CLIP c reranking)."""
    if arm["pipeline"] == "dalle":
        return ["dvae", "dalle", clip_name(c)]
    if arm["pipeline"] == "glide":  # its CLIP's embeddings are all dropped for the null
        return [clip_name(c), f"embeddings_c{c}", f"glide_decoder_c{c}"]
    priors = {"diffusion": [f"prior_c{c}_s{s}"], "ar": [f"ar_prior_c{c}_s{s}"], "": []}
    return [clip_name(c), f"embeddings_c{c}", *priors[arm["prior"]], f"decoder_c{c}"]


def count_flops(config: ml_collections.ConfigDict, workdir: Path, names: set[str]) -> None:
    """The named trained stages' `compute.json` (their train step's FLOPs × steps): one trained
    before FLOPs were counted is reopened by its trainer, which takes no step and compiles once."""
    from unclip_jax.train import loop

    for name, section in sections(config, workdir).items():
        if name in names and not (workdir / name / loop.COMPUTE_FILE).is_file():
            section.train.count_flops = True
            stages.trained(section)(workdir / name)


def training_flops(config: ml_collections.ConfigDict, workdir: Path, names: list[str]) -> dict:
    """Each named trained stage's training FLOPs (the data and embedding stages train nothing)."""
    from unclip_jax.train import loop

    trained = [name for name in names if name in sections(config, workdir)]
    return {
        name: json.loads((workdir / name / loop.COMPUTE_FILE).read_text())["flops"]
        for name in trained
    }


def training_seconds(workdir: Path, names: list[str]) -> dict[str, float]:
    """Each named stage's wall-clock seconds, from its DONE record."""
    return {
        name: json.loads((workdir / name / stages.DONE).read_text())["seconds"] for name in names
    }


def pipeline_stages(arm: dict, c: int, s: int) -> list[str]:
    """The stages the pipeline an arm samples at replicate (c, s) is exported from: the arm's
    own, and for an arm that runs no prior the diffusion prior of seed `s`, which a pipeline
    holds although the arm never samples it."""
    own = arm_stages(arm, c, s)
    if arm["pipeline"] == "dalle" or arm["prior"]:
        return own
    return [*own, f"prior_c{c}_s{s}"]


def needed_stages(config: ml_collections.ConfigDict, arm: dict, replicates) -> set[str]:
    """Every stage an arm's sampling waits for at its replicates [(c, s)]: the data, the score
    CLIP and its pipelines' stages."""
    return {"data", "score_clip"}.union(*(pipeline_stages(arm, c, s) for c, s in replicates))


def arm_pipeline(workdir: Path, arm: dict, c: int, s: int) -> Path:
    """The pipeline an arm samples at replicate (c, s): DALL·E's or GLIDE's per CLIP, unCLIP's
    per CLIP and seed, one with the diffusion prior and one with the AR prior."""
    if arm["pipeline"] == "dalle":
        return workdir / "pipelines" / f"dalle_c{c}"
    if arm["pipeline"] == "glide":
        return workdir / "pipelines" / f"glide_c{c}"
    kind = "ar_" if arm["prior"] == "ar" else ""
    return workdir / "pipelines" / f"unclip_{kind}c{c}_s{s}"


SOURCES = "SOURCES"  # in a pipeline: the DONE records of the stages it was exported from


def _sources(workdir: Path, names: list[str]) -> dict:
    return {name: (workdir / name / stages.DONE).read_text() for name in names}


def _export_once(out: Path, workdir: Path, names: list[str], export_fn) -> None:
    """`export_fn(out)` unless `out` was exported from the stages' present runs: a stage trained
    again (`--force`) makes the pipelines built from it stale, and they are exported anew."""
    sources = _sources(workdir, names)
    marker = out / SOURCES
    if marker.is_file() and json.loads(marker.read_text()) == sources:
        return
    if out.exists():
        shutil.rmtree(out)  # derived from the stages, which are kept
    export_fn(out)
    marker.write_text(json.dumps(sources))


def export_arm(config: ml_collections.ConfigDict, workdir: Path, arm: dict, c: int, s: int) -> Path:
    """The pipeline an arm samples at replicate (c, s), exported once from its stages' present
    runs (`pipeline_stages`)."""
    from unclip_jax.pipelines.dalle_store import export_dalle_pipeline
    from unclip_jax.pipelines.store import export_pipeline

    configs = sections(config, workdir)

    def trained(name: str) -> tuple[ml_collections.ConfigDict, Path]:
        return configs[name], workdir / name

    clip = clip_export(workdir, c)
    if arm["pipeline"] == "dalle":
        export = functools.partial(export_dalle_pipeline, clip_dir=clip, dalle=trained("dalle"))
    else:
        decoder = "glide_decoder" if arm["pipeline"] == "glide" else "decoder"
        prior = "ar_prior" if arm["prior"] == "ar" else "prior"
        export = functools.partial(
            export_pipeline,
            clip_dir=clip,
            decoder=trained(f"{decoder}_c{c}"),
            **{prior: trained(f"{prior}_c{c}_s{s}")},
        )
    out = arm_pipeline(workdir, arm, c, s)
    _export_once(out, workdir, pipeline_stages(arm, c, s), export)
    return out
