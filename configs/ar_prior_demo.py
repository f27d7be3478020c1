"""The autoregressive prior at demo scale, beside `prior_demo.py`: a 2-layer, 64-wide causal
transformer over the PCA codes of a small CLIP's 64-d image embeddings (captioned shapes), each
component in 64 buckets rather than the paper's 1024 (`ar_prior_paper.py`), which a tiny model
learns too slowly from 20k images. The demo trains it as a pipeline stage (`configs/demo.py`).

    unclip train --config=configs/ar_prior_demo.py --workdir=workdirs/ar_prior_demo \
        --config.data.train_dir=embeddings/train --config.data.eval_dir=embeddings/test

`arg="smoke"` shrinks it to a few steps of a 2-layer model over 4 codes (the tests' run).
"""

import ml_collections

from configs import base


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = base.get_config()
    config.trainer = "ar_prior"
    # Fields of unclip_jax.models.ar_prior.ARPrior but the code and bucket counts, which come
    # from the quantizer fitted on the training embeddings.
    config.model = ml_collections.ConfigDict(base.prior_transformer())
    # PCA of the unit-norm image embeddings (paper: 319 of 1024 dims, 1024 buckets each).
    config.quantizer = ml_collections.ConfigDict(
        dict(
            num_components=0,  # 0: the fewest covering variance_fraction
            variance_fraction=0.99,
            num_buckets=64,  # the paper's 1024 learn too slowly from 20k images
            num_dot_buckets=32,
            quantile=0.0,  # clip this fraction of outliers at each end of a component's range
            # The bucket of this quantile of the training z_i·z_t, which dot_sampling="quantile"
            # conditions every sample on.
            sample_dot_quantile=0.5,
        )
    )
    # candidates: samples per caption, the largest z_i·z_t kept (1: none; the paper reranks the
    # diffusion prior's samples only).
    config.guidance = ml_collections.ConfigDict(dict(text_drop_prob=0.1, scale=1.0, candidates=1))
    config.sampling = ml_collections.ConfigDict(
        dict(
            temperature=1.0,
            top_p=1.0,
            # The z_i·z_t token: "top_half" draws it per sample from the training distribution
            # restricted to the buckets at or above the median's (§2.1); "quantile" fixes it at
            # the bucket of quantizer.sample_dot_quantile.
            dot_sampling="top_half",
        )
    )
    config.data = ml_collections.ConfigDict(dict(train_dir="", eval_dir="", null_caption=""))
    config.eval = ml_collections.ConfigDict(dict(batch_size=256, num_batches=4))

    base.embedding_training(config, total_steps=1500)

    if arg == "smoke":
        config.model.update(width=32, depth=2, num_heads=2)
        config.quantizer.update(num_components=4, num_buckets=16, num_dot_buckets=4)
        base.shrink_training(config)
    elif arg:
        raise ValueError(f"ar_prior_demo config arg must be '' or 'smoke', got {arg!r}")
    return config
