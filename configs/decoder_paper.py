"""The paper-size decoder (Ramesh et al. 2022, §2.1 and Table 3): 3.5B parameters at 64×64,
trained with the "decoder" trainer.

GLIDE's 64×64 U-Net (512 channels, 3 blocks per level, multipliers 1,2,3,4, attention at 32, 16
and 8 px with 64-channel heads) conditioned on a ViT-H/16 CLIP image embedding, with a GLIDE-style
caption transformer (width 2048, 24 layers, 32 heads, 256 tokens) trained with it. Cosine
schedule, eps prediction with a learned variance (hybrid loss), 250 DDPM sampling steps; the
image embedding is dropped 10% and the caption 50% of the time. Table 3: AdamW lr 1.2e-4, no
weight decay, batch 2048, 800K steps, dropout 0.1, EMA 0.9999; the warm-up and the cosine decay
of the learning rate are this code's defaults.

Data: an image-caption folder (`folder_captions:<directory>`, built into a TFDS data set on
first use) and the frozen ViT-H/16 CLIP checkpoint (with its tokenizer) that computes z_i; the
trainer stops at start with a named error while `clip_dir` or the folder is unset. A folder
source holds one split, so evaluation reads training images. No sample grids during training
(they carry no captions).

    unclip train --config=configs/decoder_paper.py --workdir=workdirs/decoder_paper \
        --config.clip_dir=checkpoints/clip_vit_h16 --config.data.source=folder_captions:/data/pairs

On a TPU slice, the config arg names it and sets the mesh, per-block remat and micro-batches
with which the step fits (`SLICES`; on v5p-128 FSDP over 8 chips and two micro-batches of 16
images per chip; `experiments/tpu_aot.py`, BENCHMARKS.md):

    unclip train --config=configs/decoder_paper.py:v5p-128 --workdir=gs://bucket/decoder_paper ...

`arg="smoke"`: a 16 px U-Net with a 2-layer caption transformer on the `large_64px` shapes,
batch 8, 10 steps, for a CPU; `clip_dir` names a small CLIP (the CLIP task's `<workdir>/clip`,
e.g. from `configs/clip_shapes.py`):

    unclip train --config=configs/decoder_paper.py:smoke --workdir=/tmp/decoder_paper \
        --config.clip_dir=workdirs/clip_shapes/clip
"""

import ml_collections

from configs import base, decoder_demo

# Where this config departs from the paper (Table 3, decoder column, and §2.1); the U-Net and
# caption-transformer sizes, the cosine schedule, 250 DDPM steps with the learned variance and
# the 10% / 50% condition drops are the paper's.
DEVIATIONS = [
    base.Deviation(
        key="",
        code="unclip_jax.train.decoder_task:load_conditioning",
        paper="GLIDE's caption tokens: its own BPE, 256-token context",
        ours="the tokenizer saved with the CLIP checkpoint (CLIP's BPE, its 77-token context)",
        why="The caption transformer (256 positions, 50257 embedding rows) reads the ids of the "
        "tokenizer stored in `clip_dir`, so captions past CLIP's 77 tokens are cut and the "
        "later positions and rows above CLIP's 49408 are never used; GLIDE's vocabulary is not "
        "available offline.",
    ),
]

# Per TPU slice (`get_config(<slice>)`): the mesh, per-block remat and micro-batches with which the
# train step fits with ≥ 10% HBM headroom, compiled ahead of time by `experiments/tpu_aot.py`.
# The state needs FSDP; 32 images per chip on v5p-128 two micro-batches (32.5 of 88.5 GiB), 8 per
# chip on v5e-256 eight micro-batches of one (10.3 of 14.9 GiB); BENCHMARKS.md, "TPU".
SLICES = {
    "v5p-128": dict(mesh=dict(data=8, fsdp=8), remat="full", grad_accum_steps=2),
    "v5e-256": dict(mesh=dict(data=16, fsdp=16), remat="full", grad_accum_steps=8),
}


def _model() -> ml_collections.ConfigDict:
    """GLIDE's 64×64 U-Net and caption transformer, conditioned on the CLIP image embedding."""
    return ml_collections.ConfigDict(
        dict(
            # Fields of unclip_jax.models.unet.UNetConfig.
            unet=dict(
                out_channels=6,  # eps and the variance interpolation (learned variance)
                base_channels=512,
                channel_mults=(1, 2, 3, 4),
                num_res_blocks=3,
                attention_levels=(1, 2, 3),  # 32, 16 and 8 px
                mid_attention=True,
                head_dim=64,
                dropout=0.1,
                groups=32,
                scale_shift=True,
                remat="none",  # or "full", "dots", "dots_no_batch"
            ),
            context_dim=2048,  # width of the attention tokens (4 image tokens + caption)
            num_image_tokens=4,
            caption_source="transformer",  # or "clip" (Karlo), "none"
            # Fields of unclip_jax.models.caption_transformer.CaptionTransformerConfig.
            caption_transformer=dict(
                vocab_size=50257, max_length=256, width=2048, layers=24, heads=32
            ),
            dtype="bfloat16",
            param_dtype="float32",
        )
    )


def _smoke(config: ml_collections.ConfigDict) -> None:
    """`smoke`: a 16 px U-Net, a 2-layer caption transformer, 10 steps of batch 8."""
    config.image_size = 16
    config.image_embed_dim = 32
    base.read_shapes(config.data)
    config.model.unet.update(
        base_channels=32,
        channel_mults=(1, 2),
        num_res_blocks=1,
        attention_levels=(1,),
        head_dim=16,
        groups=8,
    )
    config.model.update(context_dim=32, dtype="float32")
    config.model.caption_transformer.update(
        vocab_size=256, max_length=16, width=32, layers=2, heads=2
    )
    config.diffusion.sample_steps = 4
    base.shrink_paper_training(config, num_samples=4)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    # The demo decoder's cosine schedule, learned variance (hybrid loss) and classifier-free
    # guidance: the training task drops the image embedding 10% and the caption 50% of the time.
    config = decoder_demo.get_config()
    config.image_size = 64
    config.image_embed_dim = 1024  # ViT-H/16
    base.read_folder(config.data, image_size=256)
    config.model = _model()
    config.diffusion.update(sampler="ddpm", sample_steps=250, prediction="eps")
    config.eval.update(batch_size=256, num_batches=4)

    # Table 3, decoder column; sample grids from held-out image embeddings and their captions.
    base.paper_training(
        config, total_steps=800_000, batch_size=2048, peak_lr=1.2e-4, sample_every=20_000
    )

    base.paper_arg(config, arg, SLICES, _smoke, "decoder_paper")
    return config
