"""DALL·E's dVAE at demo scale (Ramesh et al. 2021, §2.1): the 64 px `large_64px` shapes to 16×16
codes of a 512-way vocabulary, three groups of one residual block (widths 16, 32, 64), the codes
read through a 128-wide input projection, trained with the "dvae" trainer (1,600 steps of 16
images: about 400 s on a 2-core CPU).

The relaxation follows the paper's schedules in shape (β along a half cosine, τ falling along
another), compressed from 5,000 and 150,000 updates to 320 and 1,200 of this run's 1,600, τ
stopping at 1/4 rather than 1/16. Three departures, each from `experiments/dvae_recon.py`'s
trials (README's DALL·E demo section): 16×16 codes of 4 px rather than the paper's 8 px patches
(at 8×8 the codes learnt here stay blocks of one colour, which the oracle reads in the right
shape at most ~70% of the time, as it does an 8 px block average of the images); β = 1 rather
than 6.6; and a code usage term (`RelaxationSchedule.usage_weight`, 0.1) without which these runs
settle on a handful of codes and merge colours. More updates of smaller batches, a learning rate of
3e-3 without EMA and the wider code projection are what let the reconstructions keep colour.

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
            group_count=3,  # 64 px -> 16×16 codes
            n_hid=16,
            n_blk_per_group=1,
            channels=3,
            vocab_size=512,
            n_init=128,
            dtype="float32",  # compute; parameters float32
        )
    )
    # Fields of unclip_jax.train.dvae_task.RelaxationSchedule.
    config.relaxation = ml_collections.ConfigDict(
        dict(
            kl_weight=1.0,
            kl_warmup_steps=320,
            temperature_start=1.0,
            temperature_end=0.25,
            temperature_steps=1200,
            straight_through=False,
            usage_weight=0.1,
        )
    )
    config.eval = ml_collections.ConfigDict(dict(batch_size=32, num_batches=2))

    base.image_training(config, warmup_steps=200)
    config.train.update(total_steps=1600, batch_size=16, sample_every=1600, eval_every=800)
    config.optimizer.peak_lr = 3e-3
    config.ema.decay = 0.0  # the exported parameters are the last step's

    if arg == "smoke":
        config.data.image_size = 16
        config.model.update(group_count=2, n_hid=8, vocab_size=16, n_init=8)
        config.relaxation.update(kl_warmup_steps=1, temperature_steps=2)
        base.shrink_training(config, total_steps=2, eval_every=2, num_samples=2)
    elif arg:
        raise ValueError(f"dvae_shapes config arg must be '' or 'smoke', got {arg!r}")
    return config
