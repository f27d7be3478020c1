"""The whole chain on a folder of the user's captioned images (`unclip train-folder`,
`configs/folder.py`): the folder stored once as a data set, a CLIP trained on it (or a given one,
frozen), its embeddings, the diffusion prior, the decoder and the upsampler, each through its
registered trainer, then assembled into `<workdir>/pipeline` and sampled.

Stages run as the demo's do (`demo.stages`: DONE markers, `--force`, `--stages`, resumed when
interrupted, exit codes). The figures: `<out>/samples.png`, one row per held-out caption, and
`<out>/metrics.json` with the CLIP score of those samples beside that of the held-out images
themselves (under the pipeline's CLIP), stage times and the machine's load.
"""

from collections.abc import Sequence
from pathlib import Path

import ml_collections
import numpy as np

from unclip_jax.demo import stages

SPLITS = {"train": "train", "validation": "validation"}  # embeddings folder -> source split


def source_name(config: ml_collections.ConfigDict) -> str:
    return f"folder_captions:{Path(config.images).absolute()}"


def _read_images(data: ml_collections.ConfigDict, config: ml_collections.ConfigDict) -> None:
    """In place: a stage's `data` section reads the folder as stored by the data stage."""
    data.update(
        source=source_name(config),
        data_dir=config.data_dir or None,
        image_size=config.image_size,
        validation_fraction=config.validation_fraction,
        eval_split="validation",
    )


def with_clip_widths(prior: ml_collections.ConfigDict, clip_dir: Path) -> ml_collections.ConfigDict:
    """A copy of the prior's section with its embedding and token widths and its caption length
    those of the CLIP checkpoint at `clip_dir` (trained here or given)."""
    from unclip_jax.convert import hf_clip

    clip = hf_clip.read_clip_config(clip_dir / hf_clip.CONFIG_FILE)
    prior = ml_collections.ConfigDict(prior.to_dict())
    prior.model.update(
        embed_dim=clip.projection_dim,
        text_embed_dim=clip.projection_dim,
        token_dim=clip.text.width,
        num_tokens=clip.text.context_length,
    )
    return prior


def stage_configs(config: ml_collections.ConfigDict, workdir: Path) -> dict:
    """Each trained stage's config, wired to the folder and to the stages before it (the
    prior's widths are the CLIP's: see `with_clip_widths`)."""
    sections = {name: stages.section(config, name) for name in ("clip", "prior", "decoder")}
    sections["upsampler"] = stages.section(config, "upsampler")
    for name in ("clip", "decoder", "upsampler"):
        _read_images(sections[name].data, config)
    sections["prior"].data.train_dir = str(workdir / "embeddings" / "train")
    sections["prior"].data.eval_dir = str(workdir / "embeddings" / "validation")
    low_res = config.image_size // config.upsampling
    sections["decoder"].image_size = low_res
    sections["decoder"].clip_dir = str(stages.clip_dir(workdir))
    sections["upsampler"].update(low_res=low_res, high_res=config.image_size)
    return sections


def check(config: ml_collections.ConfigDict) -> None:
    """ValueError naming the first setting of `config` the chain cannot run with; nothing is
    read but the folder's and the CLIP's existence."""
    from unclip_jax.convert import hf_clip

    if not config.images or not Path(config.images).is_dir():
        raise ValueError(f"--images must be a directory of captioned images, got {config.images!r}")
    if config.image_size < 8 or config.image_size % config.upsampling:
        raise ValueError(
            f"--image_size must be a multiple of the upsampling factor {config.upsampling} and "
            f">= 8, got {config.image_size}"
        )
    if not 0 < config.validation_fraction < 1:
        raise ValueError(f"validation_fraction must be in (0, 1), got {config.validation_fraction}")
    if config.pretrained_clip:
        path = Path(config.pretrained_clip)
        converted = (path / hf_clip.CONFIG_FILE).is_file() and (path / "tokenizer").is_dir()
        hugging_face = (path / "config.json").is_file() and any(
            (path / name).is_file() for name in ("vocab.json", "tokenizer.json")
        )
        if not (converted or hugging_face):
            raise ValueError(
                f"--pretrained_clip must be a Hugging Face CLIP directory (config.json, weights, "
                f"tokenizer) or one from `unclip convert-clip` ({hf_clip.CONFIG_FILE}, "
                f"tokenizer/), got {config.pretrained_clip!r}"
            )


def folder_data(config: ml_collections.ConfigDict) -> stages.StageFn:
    """Stores the folder's images at `config.image_size` (TFDS, `config.data_dir`), holding out
    `config.validation_fraction` of them."""

    def build(stage_dir: Path) -> None:
        from unclip_jax.data import folder_captions

        del stage_dir
        folder_captions.build(
            config.images,
            image_size=config.image_size,
            validation_fraction=config.validation_fraction,
            data_dir=config.data_dir or None,
        )

    return build


def pretrained_clip(path: str) -> stages.StageFn:
    """The given CLIP as the stage's `clip/`: a converted one copied, a Hugging Face one
    converted."""

    def provide(stage_dir: Path) -> None:
        from unclip_jax.convert import hf_clip
        from unclip_jax.storage import locations

        if (Path(path) / hf_clip.CONFIG_FILE).is_file():
            locations.copy_tree(path, stage_dir / "clip")
        else:
            hf_clip.convert_directory(path, stage_dir / "clip")

    return provide


def steps(config: ml_collections.ConfigDict, workdir: Path) -> dict[str, stages.StageFn]:
    """Every stage in order, each a function of its directory."""
    sections = stage_configs(config, workdir)
    if config.pretrained_clip:
        clip = pretrained_clip(config.pretrained_clip)
    else:
        clip = stages.trained(sections["clip"])

    def prior(stage_dir: Path) -> None:
        stages.trained(with_clip_widths(sections["prior"], stages.clip_dir(workdir)))(stage_dir)

    return {
        "data": folder_data(config),
        "clip": clip,
        "embeddings": stages.embedded(stages.clip_dir(workdir), sections["clip"].data, SPLITS),
        "prior": prior,
        "decoder": stages.trained(sections["decoder"]),
        "upsampler": stages.trained(sections["upsampler"]),
    }


def export(config: ml_collections.ConfigDict, workdir: Path) -> Path:
    """The trained stages assembled into `<workdir>/pipeline`."""
    sections = stage_configs(config, workdir)
    sections["prior"] = with_clip_widths(sections["prior"], stages.clip_dir(workdir))
    return stages.export_unclip(workdir, sections, stages.clip_dir(workdir))


def held_out(config: ml_collections.ConfigDict) -> Sequence[dict]:
    """The folder's held-out examples (image, captions, file)."""
    from unclip_jax.data.sources import open_source

    return open_source(
        source_name(config),
        "validation",
        config.data_dir or None,
        config.image_size,
        config.validation_fraction,
    )


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def evaluate(
    config: ml_collections.ConfigDict, pipeline_dir: Path, workdir: Path, out: Path
) -> dict:
    """Samples the first caption of each of the first `config.grid_captions` held-out images
    into `<out>/samples.png`; returns the samples' mean CLIP score beside the held-out images'
    own, both under the pipeline's CLIP."""
    from unclip_jax.demo.evaluate import mean_clip_score, options, samples_grid
    from unclip_jax.evals.clip_score import CLIPScorer
    from unclip_jax.pipelines.arguments import GenerateOptions
    from unclip_jax.pipelines.store import CLIP_DIR
    from unclip_jax.pipelines.unclip import UnCLIP

    del workdir
    source = held_out(config)
    examples = [source[i] for i in range(min(config.grid_captions, len(source)))]
    captions = [_text(example["captions"][0]) for example in examples]
    grid = ml_collections.ConfigDict(config.to_dict())
    grid.grid_prompts = captions
    grid.grid_images_per_prompt = n = config.grid_images_per_caption
    pipe = UnCLIP.load(pipeline_dir, progress=True)
    samples = samples_grid(pipe, grid, out, options(config.sampling, GenerateOptions))
    scorer = CLIPScorer(pipeline_dir / CLIP_DIR)
    real = np.stack([np.asarray(example["image"]) for example in examples])
    return {
        "sampling": config.sampling.to_dict(),
        "held_out_captions": captions,
        "clip_score": mean_clip_score(scorer, samples, [c for c in captions for _ in range(n)]),
        "clip_score_data": mean_clip_score(scorer, real, captions),
    }


DEMO = stages.Demo(steps=steps, export=export, evaluate="unclip_jax.demo.folder:evaluate")
