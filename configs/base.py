"""Fields every experiment shares: seed, mesh and sharding rules, training length and batch,
optimiser and schedule, EMA, checkpoints and logging.

Stage configs start from `base.get_config()` and add their model, data and task fields; the
helpers below build the sections that several stages share (data, prior transformer, training
schedules and their `smoke` shrinks). Not a runnable experiment by itself (no trainer). Any
field can be overridden on the command line:
`unclip train --config configs/X.py --workdir DIR --config.optimizer.peak_lr=3e-4`.
"""

import dataclasses
from collections.abc import Callable
from typing import Any

import ml_collections

from unclip_jax import sharding


@dataclasses.dataclass(frozen=True)
class Deviation:
    """One place where a paper config (`configs/*_paper.py`, module-level `DEVIATIONS`) departs
    from Ramesh et al. 2022 (Table 3 and §2), checked by `tests/test_paper_configs.py`.

    `key` is a dotted path in the config that `get_config()` returns and `ours` its exact value.
    A choice fixed in code rather than in the config has `key=""` and names that code in `code`:
    `"module:function(parameter)"` (`ours` is that parameter's default) or `"module:name"`.
    """

    key: str  # e.g. "model.num_tokens"; "" when the choice is made in code
    paper: Any  # the paper's value, or a short description of it
    ours: Any  # the config's value at `key` (or the code's default, see `code`)
    why: str
    code: str = ""  # "module:function(parameter)" or "module:name", with key=""


# Both paper priors (diffusion and autoregressive) read the caption the same way.
PRIOR_CAPTION_STATES = Deviation(
    key="model.num_tokens",
    paper="the caption as 'encoded text' of a text encoder of the paper's (§2.1)",
    ours=77,
    why="The prefix holds the frozen CLIP text encoder's 77 token states (1024-d), as Karlo's "
    "prior does: `unclip embed` writes them beside z_t and no caption encoder is trained with "
    "the prior.",
)


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
    config.train.count_flops = False  # <workdir>/compute.json: the train step's FLOPs

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


# Sections that several stage configs share, built in one place. Each helper writes the values
# in which those stages agree; the stage passes the few in which they differ.

SHAPES_SOURCE = "shapes_captions/large_64px"  # one large shape (62% or 78% of the side) per image


def shapes_data() -> ml_collections.ConfigDict:
    """The demo's image data: the captioned shapes (see `read_shapes`) from TFDS's `data_dir`."""
    data = ml_collections.ConfigDict(
        dict(data_dir=ml_collections.FieldReference(None, field_type=str))
    )
    read_shapes(data)
    return data


def read_shapes(data: ml_collections.ConfigDict) -> None:
    """In place: the captioned shapes at 64 px, evaluated on their test split."""
    data.update(source=SHAPES_SOURCE, image_size=64, eval_split="test")


def read_folder(data: ml_collections.ConfigDict, image_size: int) -> None:
    """In place: an image-caption folder (`folder_captions:<directory>`, named on the command
    line) stored at `image_size` px; evaluation reads 0.1% of its images, held out by a hash of
    their path (a folder source holds one split)."""
    data.update(source="folder_captions:", image_size=image_size, validation_fraction=0.001)
    data.eval_split = "validation"


def prior_transformer(
    dim: int = 64,
    num_tokens: int = 16,
    width: int = 64,
    depth: int = 2,
    num_heads: int = 4,
    dtype: str = "float32",
) -> dict:
    """Fields that both priors' causal transformers take (`models.prior.DiffusionPrior`,
    `models.ar_prior.ARPrior`): a CLIP text embedding of `dim` and `num_tokens` caption token
    states of `dim` (the CLIP text encoder's width). The defaults are the demo's sizes."""
    return dict(
        text_embed_dim=dim,
        token_dim=dim,
        num_tokens=num_tokens,
        width=width,
        depth=depth,
        num_heads=num_heads,
        mlp_ratio=4,
        null_conditioning="learned",  # or "empty_caption" (needs data.null_caption)
        dtype=dtype,
        param_dtype="float32",
    )


def embedding_training(config: ml_collections.ConfigDict, total_steps: int) -> None:
    """In place: the demo priors' training on embedding shards: `total_steps` steps of 128, AdamW
    at 1e-3 with weight decay 0.05 (the paper's 6e-2 at this scale) and β2 0.99, EMA 0.999, no
    sample grids."""
    config.train.update(total_steps=total_steps, batch_size=128, log_every=100)
    config.train.update(eval_every=1000, sample_every=0)
    config.optimizer.update(peak_lr=1e-3, warmup_steps=100, weight_decay=0.05, b2=0.99)
    config.ema.decay = 0.999
    config.checkpoint.update(every_steps=1000, max_to_keep=1)


def image_training(config: ml_collections.ConfigDict, warmup_steps: int) -> None:
    """In place: the demo decoder's and upsampler's training: 1000 steps of 32 images with a
    16-image grid at the end, lr 1e-3 decaying to a tenth, EMA 0.995 with a warm-up (decay
    min(0.995, (1 + t) / (10 + t)): early steps weigh fully)."""
    config.train.update(total_steps=1000, batch_size=32, log_every=50, eval_every=500)
    config.train.update(sample_every=1000, num_samples=16)
    config.optimizer.update(peak_lr=1e-3, warmup_steps=warmup_steps, end_lr_factor=0.1)
    config.ema.update(decay=0.995, warmup=10.0)
    config.checkpoint.update(every_steps=500, max_to_keep=1)


def paper_training(
    config: ml_collections.ConfigDict,
    *,
    total_steps: int,
    batch_size: int,
    peak_lr: float,
    sample_every: int,
    weight_decay: float = 0.0,
    b2: float = 0.999,
    eps: float = 1.0e-8,
) -> None:
    """In place: one column of Table 3 (Ramesh et al. 2022): AdamW and EMA 0.9999; the warm-up
    and the cosine decay of the learning rate are this code's (Table 3 gives the peak only)."""
    config.train.update(total_steps=total_steps, batch_size=batch_size, log_every=100)
    config.train.update(eval_every=5000, sample_every=sample_every)
    config.optimizer.update(peak_lr=peak_lr, warmup_steps=1000, schedule="cosine")
    config.optimizer.update(end_lr_factor=0.0, weight_decay=weight_decay, b1=0.9, b2=b2, eps=eps)
    config.ema.decay = 0.9999
    config.checkpoint.update(every_steps=5000, max_to_keep=3)


def shrink_training(
    config: ml_collections.ConfigDict,
    total_steps: int = 1,
    eval_every: int = 1,
    num_samples: int = 0,
) -> None:
    """In place, for a `smoke` run: `total_steps` steps of 8 logged each step, one evaluation
    batch of 8, checkpoints written synchronously and, with `num_samples`, a grid of that many
    images at the last step."""
    config.train.update(total_steps=total_steps, batch_size=8, log_every=1, eval_every=eval_every)
    if num_samples:
        config.train.update(sample_every=total_steps, num_samples=num_samples)
    config.eval.update(batch_size=8, num_batches=1)
    config.checkpoint.async_save = False


def shrink_paper_training(config: ml_collections.ConfigDict, num_samples: int = 0) -> None:
    """In place, for a paper config's `smoke` run: 10 steps of 8 evaluated at step 5, warm-up 2,
    EMA 0.99, one checkpoint at the end."""
    shrink_training(config, total_steps=10, eval_every=5, num_samples=num_samples)
    config.optimizer.warmup_steps = 2
    config.ema.decay = 0.99
    config.checkpoint.update(every_steps=10, max_to_keep=1)


def set_remat(config: ml_collections.ConfigDict, policy: str) -> None:
    """In place: the per-block remat policy of the config's model, a U-Net's (`model.unet.remat`)
    or a transformer's (`remat`)."""
    if "unet" in config.get("model", {}):
        config.model.unet.remat = policy
    else:
        config.remat = policy


def block_remat(config: ml_collections.ConfigDict) -> str:
    """The per-block remat policy `set_remat` sets."""
    return config.model.unet.remat if "unet" in config.get("model", {}) else config.remat


def paper_arg(
    config: ml_collections.ConfigDict,
    arg: str | None,
    slices: dict[str, dict],
    smoke: Callable[[ml_collections.ConfigDict], None],
    name: str,
) -> None:
    """In place, for a paper config's `arg`: "" the paper's run as written; "smoke" its CPU-size
    variant (`smoke(config)`); a TPU slice of `slices` (e.g. "v5p-128") the mesh, per-block remat
    and micro-batches with which its train step fits that slice with ≥ 10% HBM headroom, as
    `experiments/tpu_aot.py` compiles it (BENCHMARKS.md)."""
    if arg == "smoke":
        smoke(config)
    elif arg in slices:
        plan = slices[arg]
        config.mesh = ml_collections.ConfigDict({"data": 1, "fsdp": 1, "tensor": 1, **plan["mesh"]})
        set_remat(config, plan["remat"])
        config.train.grad_accum_steps = plan["grad_accum_steps"]
    elif arg:
        raise ValueError(
            f"{name} config arg must be '', 'smoke' or a TPU slice of {sorted(slices)}, got {arg!r}"
        )


def stage_budgets(config: ml_collections.ConfigDict, stages: list[str]) -> None:
    """In place, for a config of several stages (a demo): no trainer of its own (the demo runs
    each stage's) and `train` the stages' budgets summed for a reader: the steps over all stages
    and the largest batch."""
    config.trainer = ""
    config.train = ml_collections.ConfigDict(
        dict(
            total_steps=sum(config[name].train.total_steps for name in stages),
            batch_size=max(config[name].train.batch_size for name in stages),
        )
    )
