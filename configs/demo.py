"""The main job (`make demo`): the synthetic shapes set, then CLIP → prior → decoder → upsampler
trained through their registered trainers with the demo configs, then samples and figures.

    python -m unclip_jax.demo --config configs/demo.py --workdir workdirs/demo --demo_out demo
    python -m unclip_jax.demo --config configs/demo.py:smoke ...   # every stage for a few steps

Each stage section is that stage's own config (`configs/<stage>_demo.py`, `clip_shapes.py`), so
anything in it can be overridden: `--config.decoder.train.total_steps=3000`. `score_clip` is a
second CLIP trained from another seed, used only for the CLIP score.
"""

import ml_collections

from configs import ar_prior_demo, base, clip_shapes, decoder_demo, prior_demo, upsampler_demo

SOURCE = base.SHAPES_SOURCE
# The rows of the demos' sample grids: one prompt each.
GRID_PROMPTS = (
    "a red circle",
    "a blue square",
    "a yellow triangle",
    "a green star",
    "a purple circle",
    "an orange square",
    "a large blue star",
    "a small red triangle",
)


def clip_stage(stage_arg: str | None, seed: int = 0) -> ml_collections.ConfigDict:
    """The demo CLIP (`clip_shapes.py` on the demo's data), trained from `seed`; also DALL·E's
    reranker in `demo_dalle.py`."""
    config = clip_shapes.get_config(stage_arg)
    config.data.source = SOURCE
    config.seed = seed
    if not stage_arg:
        # The demo's budget: at 500 steps the demo CLIP retrieved held-out captions at top-1 1.0.
        config.train.total_steps = 500
        config.checkpoint.every_steps = 250
    return config


def _stage_configs(config: ml_collections.ConfigDict, stage_arg: str | None) -> None:
    """The six trained stages, each its own stage config, all reading the demo's data."""
    config.clip = clip_stage(stage_arg)
    config.score_clip = clip_stage(stage_arg, seed=1)
    config.prior = prior_demo.get_config(stage_arg)
    # The prior reads the CLIP tokenizer's full context of token states.
    config.prior.model.num_tokens = config.clip.tokenizer.context_length
    # The autoregressive prior (§2.1), on the same embeddings; `unclip generate --prior ar`.
    config.ar_prior = ar_prior_demo.get_config(stage_arg)
    config.ar_prior.model.num_tokens = config.clip.tokenizer.context_length
    config.decoder = decoder_demo.get_config(stage_arg)
    config.upsampler = upsampler_demo.get_config(stage_arg)


def sampling_settings() -> ml_collections.ConfigDict:
    """Settings of the samples behind every figure."""
    return ml_collections.ConfigDict(
        dict(
            seed=20_221,  # fresh seeds, apart from every training seed
            prior_steps=64,
            decoder_steps=50,
            upsampler_steps=15,
            prior_guidance=2.0,
            decoder_guidance=3.0,
            prior_candidates=2,
            rerank_candidates=1,
        )
    )


def _eval() -> ml_collections.ConfigDict:
    """Sample counts of the figures (`unclip_jax.demo.evaluate`)."""
    return ml_collections.ConfigDict(
        dict(
            num_single=256,  # single-object samples for the oracle gates
            num_binding=64,  # two-object samples (reported, not gated)
            num_variation_sources=64,
            variations_per_source=4,
            variation_etas=(0.0, 0.5, 1.0),  # DDIM η of variations from the inverted x_T
            num_interpolations=32,
            interpolation_frames=5,
            num_text_diffs=32,
            text_diff_thetas=(0.3, 0.5, 0.7),
            num_data_reference=2000,  # test images whose layouts set the diversity reference
        )
    )


def _shrink_figures(config: ml_collections.ConfigDict) -> None:
    """`smoke`: a few samples of a few steps per figure."""
    config.eval.update(
        num_single=8,
        num_binding=4,
        num_variation_sources=2,
        variations_per_source=2,
        variation_etas=(0.0,),
        num_interpolations=2,
        interpolation_frames=2,
        num_text_diffs=2,
        num_data_reference=32,
    )
    config.sampling.update(prior_steps=2, decoder_steps=2, upsampler_steps=2)
    config.grid_prompts = config.grid_prompts[:2]
    config.grid_images_per_prompt = 2


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    if arg not in (None, "", "smoke"):
        raise ValueError(f"demo config arg must be '' or 'smoke', got {arg!r}")
    stage_arg = "smoke" if arg == "smoke" else None
    config = ml_collections.ConfigDict()
    config.data_source = SOURCE
    config.data_dir = ""  # TFDS data directory ("" = TFDS's default)
    _stage_configs(config, stage_arg)

    base.stage_budgets(config, ["clip", "score_clip", "prior", "decoder", "upsampler"])

    config.sampling = sampling_settings()
    config.eval = _eval()
    # The grid of demo/samples.png: one row per prompt.
    config.grid_prompts = list(GRID_PROMPTS)
    config.grid_images_per_prompt = 6
    if arg == "smoke":
        _shrink_figures(config)
    return config
