"""The paper-size 256→1024 upsampler (Ramesh et al. 2022, §2.1 and Table 3): 300M parameters,
trained with the "upsampler" trainer.

The 64→256 stage (`configs/upsampler256_paper.py`) with: a U-Net of 192 channels, 2 blocks per
level, multipliers 1,1,2,2,4,4, no attention, on the noisy 1024 px image concatenated with the
bicubic-upsampled 256 px image; trained on crops of ¼ the side with BSR degradation of the
conditioning image, run fully convolutionally at 1024 px (linear schedule, 15 DDIM steps).
Table 3: AdamW lr 1.0e-4, no weight decay, batch 512, 1M steps, EMA 0.9999.

Data: an image folder (`folder_captions:<directory>`, stored at 1024 px on first use); the
source opener stops at start with a named error while the folder is unset.

    unclip train --config=configs/upsampler1024_paper.py --workdir=workdirs/upsampler1024_paper \
        --config.data.source=folder_captions:/data/pairs

`arg="smoke"`: the 64→256 stage's CPU shrink (8→32 px on the shapes, 10 steps of 8) with this
stage's BSR corruption and linear schedule:

    unclip train --config=configs/upsampler1024_paper.py:smoke --workdir=/tmp/upsampler1024
"""

import ml_collections

from configs import base, upsampler256_paper

# Where this config departs from the paper (Table 3, 256→1024 column, and §2.1); the U-Net
# widths, linear schedule, 15 DDIM steps and ¼ crops are the paper's.
DEVIATIONS = [
    base.Deviation(
        key="corruption",
        paper="BSR degradation as BSRGAN defines it (Zhang et al. 2021)",
        ours="bsr",
        why="`data.degradations.bsr_degrade` is a jittable, static-shape approximation: the "
        "shuffled stages (two blurs, a down-up round trip, Gaussian noise, JPEG, camera sensor "
        "noise 25% of the time) all run at 1024 px and one resize to 256 px and a last JPEG "
        "close it; one blur is isotropic and one anisotropic (BSRGAN draws each), the shuffled "
        "JPEG always fires (BSRGAN: 90%), there is no initial ×½, and the camera noise's ISP "
        "has no colour-correction matrix.",
    ),
]

# Per TPU slice (`get_config(<slice>)`): the mesh, per-block remat and micro-batches with which the
# train step fits with ≥ 10% HBM headroom, compiled ahead of time by `experiments/tpu_aot.py`.
SLICES = {
    "v5p-128": dict(mesh=dict(data=64), remat="none", grad_accum_steps=1),
    # FSDP over 16 chips, one batch without remat: fits once every convolution's output keeps
    # the batch split (BENCHMARKS.md, "TPU: ahead-of-time compilation")
    "v5e-256": dict(mesh=dict(data=16, fsdp=16), remat="none", grad_accum_steps=1),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = upsampler256_paper.stage_config()
    config.low_res = 256
    config.high_res = 1024
    config.corruption = "bsr"  # of the conditioning image, in training only
    config.data.image_size = 1024
    config.model.unet.update(base_channels=192, channel_mults=(1, 1, 2, 2, 4, 4), num_res_blocks=2)
    config.diffusion.update(schedule="linear", sample_steps=15)
    config.eval.batch_size = 128
    # Table 3, 256→1024 column (the rest as the 64→256 stage).
    config.train.batch_size = 512
    config.optimizer.peak_lr = 1.0e-4
    base.paper_arg(config, arg, SLICES, upsampler256_paper.shrink_for_cpu, "upsampler1024_paper")
    return config
