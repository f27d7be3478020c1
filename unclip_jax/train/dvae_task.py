"""Training DALL·E's discrete VAE (Ramesh et al. 2021, §2.1 and appendix A.2): the evidence lower
bound with a Gumbel-softmax relaxation of the codes.

Per image: L = -log p(x | z̃) + β · KL(q(z | x) ‖ uniform), divided by the image's H·W·C, where
z̃ = softmax((logits + g) / τ) with Gumbel noise g is the relaxed one-hot code at each position
and p is the decoder's logit-Laplace likelihood of the mapped pixels. β rises from 0 to 6.6 over
the first 5,000 updates and τ falls from 1 to 1/16 over the first 150,000, both along a half
cosine (`RelaxationSchedule`). Training adds, where `usage_weight` w > 0 (not in the paper),
w · KL(ū ‖ uniform) once per batch, ū the batch's average of q over images and positions.
Evaluation reports the bound alone: it decodes the hard (argmax) codes, as DALL·E's transformer
will see them, with β at its final value and no usage term. Metrics: the NLL per dimension,
the KL per code position, β, τ and the perplexity of the batch's average code distribution (how
many codes are in use; at most the vocabulary size).

The schedules depend on the update, which a `Task` does not see: the train batches carry it as
`step` [B] (`NumberedBatches`, saved with the data iterator's state).

Batches: `image` float [B, S, S, 3] in [-1, 1], S a multiple of the dVAE's downsampling factor.

    unclip train --config=configs/dvae_shapes.py --workdir=workdirs/dvae_shapes

Writes, besides the loop's checkpoints, `<workdir>/dvae/`: the EMA parameters as a dVAE
checkpoint (`unclip_jax.convert.dvae.load_dvae`, as `unclip convert-dvae` writes them).
"""

import dataclasses
import math
import os
from collections.abc import Callable, Iterable, Iterator, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from unclip_jax.convert import dvae as dvae_checkpoint
from unclip_jax.data.image_batches import first_rows, held_out_batches, image_batches
from unclip_jax.models.dvae import (
    DVAEConfig,
    DVAEDecoder,
    DVAEEncoder,
    logit_laplace_nll,
    map_pixels,
)
from unclip_jax.nn.precision import compute_dtype
from unclip_jax.storage.locations import location
from unclip_jax.train import loop
from unclip_jax.train.state import TrainState
from unclip_jax.train.task import Batch, DataIterator, Metrics, Params, Task

Array = jax.Array
EXPORT_DIR = "dvae"


def cosine_ramp(step: Array, start: float, end: float, steps: int) -> Array:
    """`start` at step 0 to `end` at `steps` along half a cosine, `end` after (at once if 0)."""
    frac = jnp.clip(jnp.asarray(step, jnp.float32) / max(steps, 1), 0.0, 1.0)
    frac = jnp.ones_like(frac) if steps == 0 else frac
    return end + (start - end) * 0.5 * (1.0 + jnp.cos(jnp.pi * frac))


@dataclasses.dataclass(frozen=True)
class RelaxationSchedule:
    """β(step) and τ(step); the defaults are the paper's (appendix A.2)."""

    kl_weight: float = 6.6  # β after its warm-up
    kl_warmup_steps: int = 5_000  # β from 0 to kl_weight
    temperature_start: float = 1.0
    temperature_end: float = 1.0 / 16
    temperature_steps: int = 150_000
    # The decoder reads the hard one-hot of the relaxed sample, its gradient the relaxed one's
    # (straight-through Gumbel-softmax; Jang et al. 2017, §2.2): training decodes what evaluation
    # and the transformer decode. False is the paper's relaxation.
    straight_through: bool = False
    # Weight of KL(ū ‖ uniform), ū the batch's average code distribution (all images and
    # positions): spreads the codes in use (the "diversity loss" of Baevski et al. 2020, §3.2).
    # Not in the paper (0); small runs otherwise settle on a handful of codes.
    usage_weight: float = 0.0

    def __post_init__(self):
        for name in ("kl_weight", "usage_weight"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("temperature_start", "temperature_end"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("kl_warmup_steps", "temperature_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

    def beta(self, step: Array) -> Array:
        return cosine_ramp(step, 0.0, self.kl_weight, self.kl_warmup_steps)

    def temperature(self, step: Array) -> Array:
        return cosine_ramp(
            step, self.temperature_start, self.temperature_end, self.temperature_steps
        )


def dvae_loss(
    encoder: DVAEEncoder,
    decoder: DVAEDecoder,
    params: Params,  # {"encoder": ..., "decoder": ...}
    images: Array,  # [B, H, W, C] in [0, 1]
    key: Array,
    beta: Array,
    temperature: Array | None,  # None: hard (argmax) codes, no relaxation
    straight_through: bool = False,  # relaxed codes: the hard one-hot forward, soft gradient
    usage_weight: float = 0.0,  # RelaxationSchedule.usage_weight
) -> tuple[Array, Metrics]:
    """(mean over images of (NLL + β·KL) / (H·W·C) + usage_weight · KL(ū ‖ uniform), metrics),
    ū [V] the batch's average code distribution; see the module docstring."""
    logits = encoder.apply({"params": params["encoder"]}, images)  # [B, h, w, V]
    log_q = jax.nn.log_softmax(logits, axis=-1)
    if temperature is None:
        codes = jnp.argmax(logits, axis=-1)  # [B, h, w]
    else:
        gumbel = jax.random.gumbel(key, logits.shape, jnp.float32)
        codes = jax.nn.softmax((logits + gumbel) / temperature, axis=-1)
        if straight_through:
            hard = jax.nn.one_hot(jnp.argmax(codes, axis=-1), codes.shape[-1], dtype=codes.dtype)
            codes = codes + jax.lax.stop_gradient(hard - codes)
    stats = decoder.apply({"params": params["decoder"]}, codes)  # [B, H, W, 2C]
    nll = jnp.sum(logit_laplace_nll(map_pixels(images), stats), axis=(1, 2, 3))  # [B]
    q = jnp.exp(log_q)
    vocab = logits.shape[-1]
    kl = jnp.sum(jnp.sum(q * log_q, axis=-1) + math.log(vocab), axis=(1, 2))  # [B]
    dims = math.prod(images.shape[1:])
    usage = jnp.mean(q, axis=(0, 1, 2))  # [V]
    usage_entropy = -jnp.sum(usage * jnp.log(jnp.maximum(usage, 1e-30)))
    loss = jnp.mean(nll + beta * kl) / dims + usage_weight * (math.log(vocab) - usage_entropy)
    perplexity = jnp.exp(usage_entropy)
    return loss, {
        "nll_per_dim": jnp.mean(nll) / dims,
        "kl_per_code": jnp.mean(kl) / math.prod(logits.shape[1:3]),
        "beta": jnp.asarray(beta, jnp.float32),
        "temperature": jnp.asarray(0.0 if temperature is None else temperature, jnp.float32),
        "perplexity": perplexity,
    }


def to_unit_range(images: Array) -> Array:
    """[-1, 1] (the project's image convention) -> [0, 1] (the dVAE's)."""
    return (jnp.asarray(images, jnp.float32) + 1.0) / 2.0


class DVAETask(Task):
    """The relaxed ELB of an encoder-decoder pair; samples are reconstructions (hard codes) of
    fixed held-out images `sample_images` [N, S, S, 3] in [-1, 1]."""

    def __init__(
        self,
        config: DVAEConfig,
        schedule: RelaxationSchedule,
        dtype: jnp.dtype = jnp.float32,
        sample_images: np.ndarray | None = None,
    ):
        self.config = config
        self.schedule = schedule
        self.encoder = DVAEEncoder(config, dtype=dtype)
        self.decoder = DVAEDecoder(config, dtype=dtype)
        self.sample_images = sample_images

    def init(self, key: Array, batch_spec: dict[str, jax.ShapeDtypeStruct]) -> Params:
        del batch_spec
        f = self.config.downsample_factor
        encoder_key, decoder_key = jax.random.split(key)
        images = jnp.zeros((1, f, f, self.config.channels), jnp.float32)
        codes = jnp.zeros((1, 1, 1), jnp.int32)
        return {
            "encoder": self.encoder.init(encoder_key, images)["params"],
            "decoder": self.decoder.init(decoder_key, codes)["params"],
        }

    def loss(self, params: Params, batch: Batch, key: Array, train: bool) -> tuple[Array, Metrics]:
        images = to_unit_range(batch["image"])
        if not train:
            beta = self.schedule.beta(jnp.inf)
            return dvae_loss(self.encoder, self.decoder, params, images, key, beta, None)
        step = batch["step"][0]
        beta, temperature = self.schedule.beta(step), self.schedule.temperature(step)
        return dvae_loss(
            self.encoder,
            self.decoder,
            params,
            images,
            key,
            beta,
            temperature,
            self.schedule.straight_through,
            self.schedule.usage_weight,
        )

    def reconstruct(self, params: Params, images: Array) -> Array:
        """[B, H, W, C] in [-1, 1] -> decoded hard codes, [B, H, W, C] in [-1, 1]."""
        codes = self.encoder.apply(
            {"params": params["encoder"]}, to_unit_range(images), method=DVAEEncoder.encode
        )
        decoded = self.decoder.apply({"params": params["decoder"]}, codes, method="decode")
        return decoded * 2.0 - 1.0

    def sample(self, params: Params, key: Array, num: int) -> Array | None:
        del key
        if self.sample_images is None:
            return None
        if len(self.sample_images) < num:
            raise ValueError(f"{num} samples asked, {len(self.sample_images)} sample images held")
        return self.reconstruct(params, jnp.asarray(self.sample_images[:num]))

    @property
    def generates_images(self) -> bool:
        return self.sample_images is not None


class NumberedBatches:
    """The batches of `batches` with `step` [B] int32 added: the index of the batch among those
    yielded since training began (= the update it is for); part of the iterator's state."""

    def __init__(self, batches: DataIterator, start: int = 0):
        self.batches = batches
        self.count = start

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        batch = next(self.batches)
        size = next(iter(batch.values())).shape[0]
        numbered = dict(batch, step=np.full((size,), self.count, np.int32))
        self.count += 1
        return numbered

    def get_state(self) -> dict:
        return {"batches": self.batches.get_state(), "step": self.count}

    def set_state(self, state: dict) -> None:
        self.batches.set_state(state["batches"])
        self.count = int(state["step"])


def build_task(config: ml_collections.ConfigDict, sample_images: np.ndarray | None) -> DVAETask:
    """The task of a dVAE config (`model`: DVAEConfig fields and `dtype`; `relaxation`)."""
    fields = {k: v for k, v in config.model.items() if k != "dtype"}
    dtype = compute_dtype(config.model.dtype, "model.dtype")
    schedule = RelaxationSchedule(**dict(config.relaxation))
    return DVAETask(DVAEConfig(**fields), schedule, dtype, sample_images)


def run(
    config: ml_collections.ConfigDict,
    workdir: str | os.PathLike,
    train_source: Sequence,
    eval_source: Sequence,
    hooks: Sequence[loop.Hook] = (),
) -> TrainState:
    """Trains the dVAE on `train_source`; evaluates on, and reconstructs for the sample grids,
    the first `config.eval.num_batches` batches of `eval_source`; exports `<workdir>/dvae`."""
    common = dict(image_size=config.data.image_size, seed=config.seed)
    held_out = held_out_batches(
        eval_source, batch_size=config.eval.batch_size, count=config.eval.num_batches, **common
    )
    images = first_rows(held_out, "image", config.train.num_samples)
    task = build_task(config, images if config.train.sample_every else None)
    local_batch = config.train.batch_size // jax.process_count()
    train_data = NumberedBatches(image_batches(train_source, batch_size=local_batch, **common))
    eval_data: Callable[[], Iterable[Batch]] = lambda: iter(held_out)
    workdir = location(workdir)
    state = loop.train_and_evaluate(config, workdir, task, train_data, eval_data, hooks)
    if jax.process_index() == 0:
        params = jax.device_get(nn.unbox(state.ema_params))
        variables = {half: {"params": params[half]} for half in dvae_checkpoint.HALVES}
        dvae_checkpoint.save_dvae(workdir / EXPORT_DIR, task.config, variables)
    return state


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
    """`unclip train` entry point (trainer "dvae")."""
    from unclip_jax.data.sources import open_train_and_eval

    train_source, eval_source = open_train_and_eval(config.data)
    return run(config, workdir, train_source, eval_source)
