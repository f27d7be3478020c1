"""DALL·E's demo (`make demo-dalle`): the synthetic shapes set, then the reranking CLIP, the dVAE
and the transformer trained through their registered trainers, then samples and figures.

    python -m unclip_jax.demo.dalle --config configs/demo_dalle.py --workdir workdirs/demo_dalle \
        --demo_out demo
    python -m unclip_jax.demo.dalle --config configs/demo_dalle.py:smoke ...   # a few steps each

Each stage section is that stage's own config (`demo.py`'s CLIP, `dvae_shapes.py`,
`dalle_shapes.py`), so anything in it can be overridden: `--config.dalle.train.total_steps=4000`.
The transformer's `dvae_dir` is set by the driver to the dVAE stage's export.
"""

import ml_collections

from configs import base, dalle_shapes, demo, dvae_shapes


def _sampling() -> ml_collections.ConfigDict:
    """Settings of the samples behind every figure; the codes' temperature, top-k and top-p are
    the transformer stage's (the paper's temperature 1, no truncation)."""
    return ml_collections.ConfigDict(
        dict(
            seed=20_221,  # fresh seeds, apart from every training seed
            rerank_candidates=16,  # best-of-N of the grid and of the gated figures
            rerank_curve=(1, 2, 4, 8, 16, 32),  # N of the reranking curve, drawn once at the most
        )
    )


def _eval() -> ml_collections.ConfigDict:
    """Sample counts of the figures (`unclip_jax.demo.dalle_figures`)."""
    return ml_collections.ConfigDict(
        dict(
            num_single=256,  # single-object captions for the oracle gates and the curve
            num_reconstructions=256,  # held-out images through the dVAE
            num_completions=64,  # held-out images completed from the top half of their codes
        )
    )


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    if arg not in (None, "", "smoke"):
        raise ValueError(f"demo_dalle config arg must be '' or 'smoke', got {arg!r}")
    stage_arg = "smoke" if arg == "smoke" else None
    config = ml_collections.ConfigDict()
    config.data_source = base.SHAPES_SOURCE
    config.data_dir = ""  # TFDS data directory ("" = TFDS's default)
    config.clip = demo.clip_stage(stage_arg)
    config.dvae = dvae_shapes.get_config(stage_arg)
    config.dalle = dalle_shapes.get_config(stage_arg)

    base.stage_budgets(config, ["clip", "dvae", "dalle"])

    config.sampling = _sampling()
    config.eval = _eval()
    # The grid of demo/dalle_samples.png: one row per prompt.
    config.grid_prompts = list(demo.GRID_PROMPTS[:6])  # those without a size
    config.grid_images_per_prompt = 6
    if arg == "smoke":
        config.sampling.update(rerank_candidates=2, rerank_curve=(1, 2))
        config.eval.update(num_single=4, num_reconstructions=4, num_completions=2)
        config.grid_prompts = config.grid_prompts[:2]
        config.grid_images_per_prompt = 2
    return config
