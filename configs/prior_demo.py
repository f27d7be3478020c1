"""The diffusion prior at demo scale: a 2-layer, 64-wide prior on a small CLIP's embeddings of
the captioned-shapes set (64-d embeddings, 16 caption positions). Trains in minutes on a CPU.

    unclip train --config=configs/prior_demo.py --workdir=workdirs/prior_demo \
        --config.data.train_dir=embeddings/train --config.data.eval_dir=embeddings/test

`arg="smoke"` shrinks it to a few steps of a 2-layer model (the tests' one-step run).
"""

import ml_collections

from configs import base


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = base.get_config()
    config.trainer = "diffusion_prior"
    # Fields of unclip_jax.models.prior.DiffusionPrior.
    config.model = ml_collections.ConfigDict(
        dict(embed_dim=64, **base.prior_transformer(), text_embed_norm=True)
    )
    # The small CLIP's embeddings fill a narrow cone (text-image cosine ~0.9), so per-dimension
    # standardisation (Karlo's) rather than the paper's unit norm x sqrt(d).
    config.embedding_norm = "mean_std"  # or "unit_norm"
    # min-SNR weighting of the x0 MSE ("uniform" is the paper's): a small prior trained briefly
    # otherwise ignores x_t at low noise and its samples collapse to the caption's mean.
    config.diffusion = ml_collections.ConfigDict(
        dict(
            schedule="cosine",
            train_steps=1000,
            sample_steps=64,
            prediction="x0",
            # the sampling steps' variance: or "fixed_large", "analytic" (Analytic-DPM: the
            # trainer then writes the prior's Γ table at the end of training)
            variance="fixed_small",
            loss_weight="min_snr",  # or "uniform"
            snr_gamma=20.0,
        )
    )
    config.guidance = ml_collections.ConfigDict(dict(text_drop_prob=0.1, scale=1.0, candidates=2))
    # Embedding shards written by `unclip embed` (with token states).
    config.data = ml_collections.ConfigDict(dict(train_dir="", eval_dir="", null_caption=""))
    config.eval = ml_collections.ConfigDict(dict(batch_size=256, num_batches=4, sample_steps=64))

    base.embedding_training(config, total_steps=2000)

    if arg == "smoke":
        config.model.update(width=32, depth=2, num_heads=2)
        base.shrink_training(config)
        config.eval.sample_steps = 0
    elif arg:
        raise ValueError(f"prior_demo config arg must be '' or 'smoke', got {arg!r}")
    return config
