"""DALL·E's transformer at demo scale (Ramesh et al. 2021, §2.2) on the 64 px shapes: a BPE of
the captions (128 tokens, 16 positions) then the 16×16 codes of `dvae_shapes.py`'s dVAE, 4
layers of width 128 (2 heads of 64) with the paper's row / column / convolutional mask schedule
(kernel 5 over the 16×16 grid, as the paper's 11 over 32×32), trained with the "dalle" trainer
(2,200 steps of 16 sequences of 16 + 256 tokens: about 0.4 s a step on a 2-core CPU).

    unclip train --config=configs/dalle_shapes.py --workdir=workdirs/dalle_shapes \
        --config.dvae_dir=workdirs/dvae_shapes/dvae

`arg="smoke"`: 2 steps of a 2-layer model over the smoke dVAE's 16 px images (8×8 codes of 16).
"""

import ml_collections

from configs import base


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = base.get_config()
    config.trainer = "dalle"
    config.data = base.shapes_data()  # 64 px
    config.dvae_dir = ""  # a dVAE checkpoint: the dvae trainer's <workdir>/dvae
    config.tokenizer = ml_collections.ConfigDict(
        dict(vocab_size=128, context_length=16, train_examples=4000)
    )
    # Fields of unclip_jax.models.dalle.DalleConfig but the sizes the tokenizer and the dVAE set.
    config.model = ml_collections.ConfigDict(
        dict(
            width=128,
            depth=4,
            num_heads=2,
            head_dim=64,
            mlp_ratio=4,
            pattern="sparse",  # or "dense" (the ablation), "row", "column", "conv"
            conv_kernel=5,
            dtype="float32",  # compute; parameters float32
        )
    )
    config.eval = ml_collections.ConfigDict(dict(batch_size=64, num_batches=2))

    base.image_training(config, warmup_steps=100)
    config.train.update(total_steps=2200, batch_size=16, sample_every=2200, eval_every=1100)
    config.optimizer.update(peak_lr=5e-4, weight_decay=0.01)
    config.ema.decay = 0.999

    if arg == "smoke":
        config.data.image_size = 16
        config.tokenizer.update(vocab_size=64, context_length=8, train_examples=64)
        config.model.update(width=32, depth=2, num_heads=2, head_dim=16, conv_kernel=3)
        base.shrink_training(config, total_steps=2, eval_every=2, num_samples=2)
    elif arg:
        raise ValueError(f"dalle_shapes config arg must be '' or 'smoke', got {arg!r}")
    return config
