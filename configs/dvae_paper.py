"""The paper-size dVAE of DALL·E (Ramesh et al. 2021, §2.1 and appendix A.2): 256 px images to
32×32 codes of an 8192-way vocabulary, OpenAI's released architecture (`DVAEConfig()`: 53.8M
encoder + 43.8M decoder parameters), trained with the "dvae" trainer.

Relaxation (appendix A.2): β from 0 to 6.6 over the first 5,000 updates, τ from 1 to 1/16 over
the first 150,000, both cosine. Optimisation as appendix A.2 gives it: AdamW at 1e-4 decaying
along a cosine to 1.25e-6, weight decay 1e-4, batch 512, 3M updates; the warm-up, the EMA and
bfloat16 compute are this code's.

Data: an image folder (`folder_captions:<directory>`, stored at 256 px on first use; captions
are not read):

    unclip train --config=configs/dvae_paper.py --workdir=workdirs/dvae_paper \
        --config.data.source=folder_captions:/data/images

`arg="smoke"`: 2 steps of a 2-group dVAE on the 64 px shapes at 16 px, for a CPU.
"""

import ml_collections

from configs import base, dvae_shapes

DEVIATIONS = [
    base.Deviation(
        key="model.dtype",
        paper="float16 activations (appendix A.2) on V100s",
        ours="bfloat16",
        why="bfloat16 has float32's exponent range: no loss scaling is needed on TPUs; the "
        "parameters stay float32.",
    ),
]


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = dvae_shapes.get_config()
    base.read_folder(config.data, image_size=256)
    config.model.update(group_count=4, n_hid=256, n_blk_per_group=2, vocab_size=8192, n_init=128)
    config.model.dtype = "bfloat16"
    config.relaxation.update(kl_weight=6.6, kl_warmup_steps=5_000)
    config.relaxation.update(temperature_start=1.0, temperature_end=1.0 / 16)
    config.relaxation.update(temperature_steps=150_000, straight_through=False)
    config.eval.update(batch_size=64, num_batches=4)
    base.paper_training(
        config,
        total_steps=3_000_000,
        batch_size=512,
        peak_lr=1e-4,
        sample_every=20_000,
        weight_decay=1e-4,
    )
    config.optimizer.end_lr_factor = 1.25e-6 / 1e-4

    if arg == "smoke":
        base.read_shapes(config.data)
        config.data.image_size = 16
        config.model.update(group_count=2, n_hid=8, n_blk_per_group=1, vocab_size=16, n_init=8)
        config.model.dtype = "float32"
        config.relaxation.update(kl_warmup_steps=1, temperature_steps=2)
        base.shrink_training(config, total_steps=2, eval_every=2, num_samples=2)
    elif arg:
        raise ValueError(f"dvae_paper config arg must be '' or 'smoke', got {arg!r}")
    return config
