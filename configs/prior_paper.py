"""The paper-size diffusion prior (Ramesh et al. 2022, Table 3): 1B parameters on ViT-H/16 CLIP.

Model section only; the prior training task reads `model` (the `DiffusionPrior` fields),
`diffusion` and `optim`. `arg="runlocal"` shrinks the model for a quick local run.

    unclip train --config=configs/prior_paper.py --workdir=workdirs/prior_paper
"""

import ml_collections

from configs import base


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = base.get_config()
    config.trainer = ""  # the prior training task registers itself here
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
            null_conditioning="learned",  # or "empty_caption"
            dtype="bfloat16",
            param_dtype="float32",
        )
    )
    config.embedding_norm = "unit_norm"  # or "mean_std"
    config.diffusion = ml_collections.ConfigDict(
        dict(schedule="cosine", train_steps=1000, sample_steps=64, prediction="x0")
    )
    config.guidance = ml_collections.ConfigDict(dict(text_drop_prob=0.1, scale=4.0, candidates=2))
    # Table 3, diffusion prior column.
    config.optim = ml_collections.ConfigDict(
        dict(
            learning_rate=1.1e-4,
            weight_decay=6.0e-2,
            b1=0.9,
            b2=0.96,
            eps=1.0e-6,
            batch_size=4096,
            train_steps=600_000,
        )
    )
    if arg == "runlocal":
        config.model.update(
            embed_dim=32,
            text_embed_dim=32,
            token_dim=32,
            num_tokens=8,
            width=64,
            depth=2,
            num_heads=4,
            dtype="float32",
        )
        config.optim.batch_size = 8
        config.optim.train_steps = 10
    elif arg:
        raise ValueError(f"prior_paper config arg must be '' or 'runlocal', got {arg!r}")
    return config
