"""The main job: build the shapes set, train CLIP → priors → decoder → upsampler, sample, score.

    python -m unclip_jax.demo --config configs/demo.py --workdir workdirs/demo --demo_out demo

Stages run in order through the registered trainers (`train/trainers.py`), skipped when finished
and resumed when interrupted (`demo.stages`: DONE markers, `--force`, `--stages`, exit codes).
Then the stages are assembled into `<workdir>/pipeline` (`UnCLIP.load`-able, with both priors:
the diffusion prior by default, the autoregressive one with `prior="ar"`) and the figures are
written: `<out>/samples.png` (one row per prompt of `config.grid_prompts`) and
`<out>/metrics.json` (oracle accuracy, binding, CLIP score, diversity, variations,
interpolations, text diffs, stage times and the machine's load).
"""

from pathlib import Path

import ml_collections

from unclip_jax.demo import stages

SPLITS = {"train": "train", "test": "test"}  # embeddings folder -> source split


def stage_configs(config: ml_collections.ConfigDict, workdir: Path) -> dict:
    """Each trained stage's config, wired to the outputs of the stages before it."""
    names = ("clip", "score_clip", "prior", "ar_prior", "decoder", "upsampler")
    sections = {name: stages.section(config, name) for name in names}
    for prior in ("prior", "ar_prior"):  # both read the conditioning CLIP's embeddings
        sections[prior].data.train_dir = str(workdir / "embeddings" / "train")
        sections[prior].data.eval_dir = str(workdir / "embeddings" / "test")
    sections["decoder"].clip_dir = str(stages.clip_dir(workdir))
    return sections


def steps(config: ml_collections.ConfigDict, workdir: Path) -> dict[str, stages.StageFn]:
    """Every stage in order, each a function of its directory."""
    sections = stage_configs(config, workdir)
    return {
        "data": stages.shapes_data(config),
        "clip": stages.trained(sections["clip"]),
        "score_clip": stages.trained(sections["score_clip"]),
        # the embeddings of the images the decoder reads, with the conditioning CLIP
        "embeddings": stages.embedded(stages.clip_dir(workdir), sections["decoder"].data, SPLITS),
        "prior": stages.trained(sections["prior"]),
        "ar_prior": stages.trained(sections["ar_prior"]),
        "decoder": stages.trained(sections["decoder"]),
        "upsampler": stages.trained(sections["upsampler"]),
    }


def export(config: ml_collections.ConfigDict, workdir: Path) -> Path:
    """The trained stages assembled into `<workdir>/pipeline` (both priors)."""
    return stages.export_unclip(workdir, stage_configs(config, workdir), stages.clip_dir(workdir))


DEMO = stages.Demo(steps=steps, export=export, evaluate="unclip_jax.demo.evaluate:evaluate")
