"""DALL·E's dVAE at demo scale (Ramesh et al. 2021, §2.1): the 64 px `large_64px` shapes to 8×8
codes of a 512-way vocabulary, four groups of one residual block (widths 16, 32, 64, 128),
0.23M parameters in all, trained with the "dvae" trainer (800 steps of 32 images: 522 s on a
2-core CPU).

The relaxation follows the paper's schedules in shape (β up to 6.6 along a half cosine, τ from 1
to 1/16 along another), compressed from 5,000 and 150,000 updates to this run's 800.

    unclip train --config=configs/dvae_shapes.py --workdir=workdirs/dvae_shapes

`arg="smoke"`: 2 steps of a 2-group dVAE (16 px -> 8×8 codes of 16), for the tests.
"""

import ml_collections

from configs import base


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = base.get_config()
    config.trainer = "dvae"
    config.data = base.shapes_data()  # 64 px
    config.model = ml_collections.ConfigDict(
        dict(
            # Fields of unclip_jax.models.dvae.DVAEConfig.
            group_count=4,  # 64 px -> 8×8 codes
            n_hid=16,
            n_blk_per_group=1,
            channels=3,
            vocab_size=512,
            n_init=16,
            dtype="float32",  # compute; parameters float32
        )
    )
    # Fields of unclip_jax.train.dvae_task.RelaxationSchedule.
    config.relaxation = ml_collections.ConfigDict(
        dict(
            kl_weight=6.6,
            kl_warmup_steps=80,
            temperature_start=1.0,
            temperature_end=1.0 / 16,
            temperature_steps=600,
        )
    )
    config.eval = ml_collections.ConfigDict(dict(batch_size=32, num_batches=2))

    base.image_training(config, warmup_steps=50)
    config.train.update(total_steps=800, sample_every=800, eval_every=400)
    config.ema.decay = 0.99

    if arg == "smoke":
        config.data.image_size = 16
        config.model.update(group_count=2, n_hid=8, vocab_size=16, n_init=8)
        config.relaxation.update(kl_warmup_steps=1, temperature_steps=2)
        base.shrink_training(config, total_steps=2, eval_every=2, num_samples=2)
    elif arg:
        raise ValueError(f"dvae_shapes config arg must be '' or 'smoke', got {arg!r}")
    return config
