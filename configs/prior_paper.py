"""The paper-size diffusion prior (Ramesh et al. 2022, §2.1 and Table 3): 1.0B parameters on
ViT-H/16 CLIP embeddings, trained with the "diffusion_prior" trainer.

A causal transformer of 20 layers, width 2048, over [caption token states, z_t, timestep, noised
z_i, query] predicting z_i directly (uniform x0 MSE, 1000-step cosine schedule, caption dropped
10% of the time). Table 3: AdamW lr 1.1e-4, weight decay 6e-2, β2 0.96, ε 1e-6, batch 4096,
600K steps, EMA 0.9999. The warm-up and the cosine decay of the learning rate are this code's
defaults (Table 3 gives the peak only).

Data: embedding shards with token states written by `unclip embed` with the ViT-H/16 CLIP over
the training image-caption set; the trainer stops at start with a named error while
`data.train_dir` is unset.

    unclip train --config=configs/prior_paper.py --workdir=workdirs/prior_paper \
        --config.data.train_dir=embeddings/train --config.data.eval_dir=embeddings/eval

`arg="smoke"`: the demo's shapes (64-d embeddings, 16 caption positions, as `unclip embed`
writes with the demo CLIP), a 2-layer 64-wide prior, batch 8, 10 steps, for a CPU:

    unclip train --config=configs/prior_paper.py:smoke --workdir=/tmp/prior_paper \
        --config.data.train_dir=embeddings/train
"""

import ml_collections

from configs import prior_demo


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = prior_demo.get_config()
    # Fields of unclip_jax.models.prior.DiffusionPrior: 20 layers of width 2048 (~1.0B).
    config.model = ml_collections.ConfigDict(
        dict(
            embed_dim=1024,  # ViT-H/16 image embedding
            text_embed_dim=1024,
            token_dim=1024,  # width of the CLIP text encoder's token states
            num_tokens=77,
            width=2048,
            depth=20,
            num_heads=32,
            mlp_ratio=4,
            null_conditioning="learned",  # or "empty_caption" (needs data.null_caption)
            dtype="bfloat16",
            param_dtype="float32",
        )
    )
    config.embedding_norm = "unit_norm"  # or "mean_std"
    config.diffusion = ml_collections.ConfigDict(
        dict(
            schedule="cosine",
            train_steps=1000,
            sample_steps=64,
            prediction="x0",
            loss_weight="uniform",  # or "min_snr"
        )
    )
    config.guidance = ml_collections.ConfigDict(dict(text_drop_prob=0.1, scale=4.0, candidates=2))
    config.data = ml_collections.ConfigDict(dict(train_dir="", eval_dir="", null_caption=""))
    config.eval = ml_collections.ConfigDict(dict(batch_size=1024, num_batches=4, sample_steps=64))

    # Table 3, diffusion prior column.
    config.train.update(total_steps=600_000, batch_size=4096, log_every=100)
    config.train.update(eval_every=5000, sample_every=0)
    config.optimizer.update(peak_lr=1.1e-4, warmup_steps=1000, schedule="cosine")
    config.optimizer.update(end_lr_factor=0.0, weight_decay=6.0e-2, b1=0.9, b2=0.96, eps=1.0e-6)
    config.ema.decay = 0.9999
    config.checkpoint.update(every_steps=5000, max_to_keep=3)

    if arg == "smoke":
        config.model.update(
            embed_dim=64,
            text_embed_dim=64,
            token_dim=64,
            num_tokens=16,
            width=64,
            depth=2,
            num_heads=4,
            dtype="float32",
        )
        config.eval.update(batch_size=8, num_batches=1, sample_steps=4)
        config.train.update(total_steps=10, batch_size=8, log_every=1, eval_every=5)
        config.optimizer.warmup_steps = 2
        config.ema.decay = 0.99
        config.checkpoint.update(every_steps=10, max_to_keep=1, async_save=False)
    elif arg:
        raise ValueError(f"prior_paper config arg must be '' or 'smoke', got {arg!r}")
    return config
