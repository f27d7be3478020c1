"""A small CLIP trained contrastively on the 32 px captioned shapes (issue: CLIP in Flax).

    unclip train --config configs/clip_shapes.py --workdir /tmp/clip_shapes
    unclip train --config configs/clip_shapes.py:smoke --workdir /tmp/clip_smoke   # a few steps

Fine-tune a converted CLIP instead: `--config.init_from=DIR` (from `unclip convert-clip`; its
tokenizer in DIR/tokenizer replaces the trained BPE and its config replaces `model`).
"""

import ml_collections

from configs import base


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = base.get_config()
    config.trainer = "clip"
    config.init_from = ""  # a CLIP checkpoint directory to fine-tune, or "" to train from scratch

    config.data = ml_collections.ConfigDict()
    config.data.source = "shapes_captions/32px"  # or "folder_captions:<directory>"
    config.data.data_dir = ml_collections.FieldReference(None, field_type=str)
    config.data.image_size = 32
    config.data.random_flip = False

    config.tokenizer = ml_collections.ConfigDict()
    config.tokenizer.vocab_size = 128  # of the BPE trained on the training captions
    config.tokenizer.context_length = 24
    config.tokenizer.train_examples = 4000  # examples whose captions train the BPE

    config.model = ml_collections.ConfigDict()
    config.model.variant = "tiny-shapes"  # a key of unclip_jax.models.clip.VARIANTS
    # Field overrides of the variant's TextConfig / VisionConfig.
    config.model.text = ml_collections.ConfigDict({"layers": 2, "width": 64, "mlp_dim": 256})
    config.model.vision = ml_collections.ConfigDict(
        {"patch_size": 8, "width": 64, "layers": 2, "mlp_dim": 256}
    )

    config.eval = ml_collections.ConfigDict()
    config.eval.batch_size = 64
    config.eval.num_examples = 2000  # of the test split; its single-object images are scored

    config.train.total_steps = 800
    config.train.batch_size = 128
    config.train.log_every = 50
    config.train.eval_every = 400
    config.train.eval_with_ema = False
    config.optimizer.peak_lr = 3e-3
    config.optimizer.warmup_steps = 50
    config.optimizer.end_lr_factor = 0.05
    config.optimizer.weight_decay = 0.05
    config.ema.decay = 0.99
    config.checkpoint.every_steps = 800
    config.checkpoint.max_to_keep = 1

    if arg == "smoke":
        config.train.total_steps = 3
        config.train.batch_size = 16
        config.train.eval_every = 3
        config.eval.batch_size = 8
        config.eval.num_examples = 64
        config.tokenizer.train_examples = 64
        config.checkpoint.every_steps = 3
    return config
