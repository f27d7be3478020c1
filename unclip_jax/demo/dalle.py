"""DALL·E's demo (`make demo-dalle`): build the shapes set, train the reranking CLIP, the dVAE and
the transformer, assemble the pipeline, sample, score.

    python -m unclip_jax.demo.dalle --config configs/demo_dalle.py \
        --workdir workdirs/demo_dalle --demo_out demo

Stages run in order through the registered trainers ("clip", "dvae", "dalle"), skipped when
finished and resumed when interrupted (`demo.stages`: DONE markers, `--force`, `--stages`, exit
codes); the transformer reads the codes of the dVAE stage's export. Then the stages are assembled
into `<workdir>/pipeline` (`Dalle.load`-able) and the figures are written:
`<out>/dalle_samples.png` (one row per prompt of `config.grid_prompts`, best of
`config.sampling.rerank_candidates`) and `<out>/dalle_metrics.json` (`demo.dalle_figures`: oracle
accuracy with and without reranking, the reranking curve, the dVAE's reconstructions and
codebook perplexity, completions, stage times and the machine's load).
"""

from pathlib import Path

import ml_collections

from unclip_jax.demo import stages


def stage_configs(config: ml_collections.ConfigDict, workdir: Path) -> dict:
    """Each trained stage's config, the transformer wired to the dVAE stage's export."""
    from unclip_jax.train import dvae_task

    sections = {name: stages.section(config, name) for name in ("clip", "dvae", "dalle")}
    sections["dalle"].dvae_dir = str(workdir / "dvae" / dvae_task.EXPORT_DIR)
    return sections


def steps(config: ml_collections.ConfigDict, workdir: Path) -> dict[str, stages.StageFn]:
    """Every stage in order, each a function of its directory."""
    sections = stage_configs(config, workdir)
    trained = {name: stages.trained(section) for name, section in sections.items()}
    return {"data": stages.shapes_data(config)} | trained


def export(config: ml_collections.ConfigDict, workdir: Path) -> Path:
    """The trained stages assembled into `<workdir>/pipeline`, the CLIP reranking."""
    from unclip_jax.pipelines.dalle_store import export_dalle_pipeline

    sections = stage_configs(config, workdir)
    return export_dalle_pipeline(
        workdir / "pipeline",
        clip_dir=stages.clip_dir(workdir),
        dalle=(sections["dalle"], workdir / "dalle"),
    )


DEMO = stages.Demo(
    steps=steps,
    export=export,
    evaluate="unclip_jax.demo.dalle_figures:evaluate",
    metrics_file="dalle_metrics.json",
)

if __name__ == "__main__":
    stages.launch(DEMO, "configs/demo_dalle.py", "workdirs/demo_dalle")
