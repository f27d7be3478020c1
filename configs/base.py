"""Fields every experiment shares: seed, mesh and sharding rules, training length and batch,
optimiser and schedule, EMA, checkpoints and logging.

Stage configs start from `base.get_config()` and add their model, data and task fields. Not a
runnable experiment by itself (no trainer). Any field can be overridden on the command line:
`unclip train --config configs/X.py --workdir DIR --config.optimizer.peak_lr=3e-4`.
"""

import ml_collections

from unclip_jax import sharding


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    del arg
    config = ml_collections.ConfigDict()
    config.trainer = ""  # a name from unclip_jax.train.trainers.TRAINERS
    config.seed = 0
    # Mesh axis sizes; one -1 takes the remaining devices.
    config.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})
    config.sharding = ml_collections.ConfigDict()
    # Ordered (logical axis name, mesh axes) pairs; the first rule that names an axis wins.
    config.sharding.rules = [list(rule) for rule in sharding.DEFAULT_RULES]
    # Per-block rematerialisation: "none", "full", "dots" or "dots_no_batch" (sharding.remat).
    config.remat = "none"

    config.train = ml_collections.ConfigDict()
    config.train.total_steps = 100_000
    config.train.batch_size = 256  # global, over all processes and micro-batches
    config.train.grad_accum_steps = 1
    config.train.compute_dtype = "float32"  # or "bfloat16" (parameters stay float32)
    config.train.max_nonfinite_steps = 10  # this many skipped steps in a row stop the run
    config.train.log_every = 50
    config.train.eval_every = 1000  # 0: never
    config.train.eval_with_ema = True
    config.train.sample_every = 5000  # 0: never; only stages that generate images
    config.train.num_samples = 16

    config.optimizer = ml_collections.ConfigDict()
    config.optimizer.peak_lr = 1e-4
    config.optimizer.warmup_steps = 1000
    config.optimizer.schedule = "cosine"  # or "linear", "constant"
    config.optimizer.end_lr_factor = 0.0
    config.optimizer.b1 = 0.9
    config.optimizer.b2 = 0.999
    config.optimizer.eps = 1e-8
    config.optimizer.weight_decay = 0.0
    config.optimizer.grad_clip_norm = 1.0  # 0: no clipping

    config.ema = ml_collections.ConfigDict()
    config.ema.decay = 0.9999
    config.ema.warmup = 10.0  # decay at update t: min(decay, (1 + t) / (warmup + t))

    config.checkpoint = ml_collections.ConfigDict()
    config.checkpoint.every_steps = 1000
    config.checkpoint.max_to_keep = 3
    config.checkpoint.async_save = True
    return config
