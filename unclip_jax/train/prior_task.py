"""Training the diffusion prior (Ramesh et al. 2022, §2.1): p(z_i | y) from embedding pairs.

Each step noises the (normalised) image embedding to a uniform timestep of a 1000-step cosine
schedule, and the prior predicts the clean embedding from it, the caption's token states and its
text embedding; the loss is the MSE on x0. The caption is replaced by the model's null
conditioning with probability `text_drop_prob` (10%), for classifier-free guidance at sampling.
A config that samples with `diffusion.variance="analytic"` (Analytic-DPM, as Table 3's prior) has
the prior's Γ table estimated with the final EMA parameters on training batches and saved in the
workdir beside the normaliser, from where the pipeline export carries both into the prior stage.

Batches (host-local numpy, the names of the embedding shards written by `unclip embed`):

    image_embedding  float [B, Dz]     CLIP image embedding z_i
    text_embedding   float [B, Dz]     CLIP text embedding z_t
    token_states     float [B, L, Dt]  the text encoder's last hidden states
    text_mask        bool  [B, L]      False at caption padding

    unclip train --config=configs/prior_demo.py --workdir=workdirs/prior_demo \
        --config.data.train_dir=embeddings/train --config.data.eval_dir=embeddings/test
"""

import dataclasses
import functools
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from etils import epath

from unclip_jax import sharding
from unclip_jax.data.embedding_shards import EmbeddingShards, embedding_iterator
from unclip_jax.diffusion import analytic, losses
from unclip_jax.diffusion.schedules import Schedule, make_schedule
from unclip_jax.models.prior import (
    DiffusionPrior,
    EmbeddingNormalizer,
    check_null_given,
    substitute_null,
)
from unclip_jax.nn.precision import parse_dtypes
from unclip_jax.sampling.prior import EncodedCaption, NullCaption, make_prior_sampler
from unclip_jax.sampling.settings import DiffusionSettings
from unclip_jax.storage.locations import location
from unclip_jax.train import denoising, loop
from unclip_jax.train import step as step_lib
from unclip_jax.train.state import TrainState
from unclip_jax.train.task import Batch, Metrics, Params, Task, check_probability

Array = jax.Array
BATCH_FIELDS = ("image_embedding", "text_embedding", "token_states", "text_mask")
NORMALIZER_FILE = "embedding_normalizer.json"
ANALYTIC_FILE = analytic.TABLE_FILE  # the Γ table, beside the normaliser


def cast_batch(
    batch: dict[str, np.ndarray], num_tokens: int | None = None
) -> dict[str, np.ndarray]:
    """Embedding-shard rows as the prior reads them: float32 embeddings, bool mask, and the
    caption positions cut to `num_tokens` (those cut must be padding: the CLIP text tower is
    causal, so the states kept do not depend on them)."""
    out = {k: np.asarray(batch[k], np.float32) for k in BATCH_FIELDS if k != "text_mask"}
    mask = np.asarray(batch["text_mask"], bool)
    if num_tokens is not None and num_tokens < mask.shape[1]:
        longest = int(mask.sum(axis=1).max())
        if mask[:, num_tokens:].any():
            raise ValueError(
                f"a caption of {longest} tokens does not fit the prior's num_tokens={num_tokens}"
            )
        out["token_states"] = out["token_states"][:, :num_tokens]
        mask = mask[:, :num_tokens]
    out["text_mask"] = mask
    return out


def embedding_batches(
    directory: str | Path,
    *,
    batch_size: int,
    seed: int,
    num_tokens: int | None = None,
    **kwargs,
):
    """Checkpointable prior batches (`BATCH_FIELDS`, caption positions cut to `num_tokens`)
    from embedding shards; kwargs go to `input_pipeline.DataIterator` (shuffle, num_epochs, ...)."""
    return embedding_iterator(
        directory,
        batch_size=batch_size,
        seed=seed,
        fields=BATCH_FIELDS,
        batch_fn=functools.partial(cast_batch, num_tokens=num_tokens),
        **kwargs,
    )


def min_snr_weight(gamma: float):
    """Per-example x0-MSE weights min(SNR_t, gamma) (Hang et al. 2023, "min-SNR"): the
    nearly-clean timesteps, where the prediction must follow x_t rather than the caption's mean,
    count as much as the noisy ones. index: [B] -> [B]."""

    def weight(schedule: Schedule, index: Array) -> Array:
        alpha_bar = jnp.take(schedule.alphas_cumprod, index)
        return jnp.minimum(alpha_bar / (1.0 - alpha_bar), gamma)

    return weight


# name -> (gamma -> weight(schedule, index)); "uniform" is the paper's plain MSE on x0.
LOSS_WEIGHTS = {"uniform": None, "min_snr": min_snr_weight}


def cosine(a: Array, b: Array) -> Array:  # [B, D], [B, D] -> [B]
    a = a / jnp.linalg.norm(a, axis=-1, keepdims=True)
    b = b / jnp.linalg.norm(b, axis=-1, keepdims=True)
    return jnp.sum(a * b, axis=-1)


class DiffusionPriorTask(Task):
    """MSE on the clean image embedding at a uniform timestep, with caption dropout.

    `null` is the empty caption's (embedding [Dz], token states [L, Dt], mask [L]) for models
    whose null conditioning is "empty_caption"; models with learned null tokens take None.
    `loss_weight` reweights the MSE per timestep: "uniform" (the paper) or "min_snr" with
    `snr_gamma`. Evaluation adds, when `sample_schedule` is given, the cosine of a sampled
    embedding (guided, best of `num_candidates`) with the true one, beside the text embedding's.
    """

    def __init__(
        self,
        model: DiffusionPrior,
        normalizer: EmbeddingNormalizer,
        schedule: Schedule,
        text_drop_prob: float = 0.1,
        null: NullCaption | None = None,
        sample_schedule: Schedule | None = None,
        guidance_scale: float = 1.0,
        num_candidates: int = 2,
        loss_weight: str = "uniform",  # or "min_snr"
        snr_gamma: float = 5.0,
    ):
        check_probability("text_drop_prob", text_drop_prob)
        check_null_given(null, model.null_conditioning)
        if loss_weight not in LOSS_WEIGHTS:
            raise ValueError(
                f"loss_weight must be one of {sorted(LOSS_WEIGHTS)}, got {loss_weight!r}"
            )
        make_weight = LOSS_WEIGHTS[loss_weight]
        self.weight = None if make_weight is None else make_weight(snr_gamma)
        self.model = model
        self.normalizer = normalizer
        self.schedule = schedule
        self.text_drop_prob = text_drop_prob
        self.null = null
        self.sample_schedule = sample_schedule
        self.guidance_scale = guidance_scale
        self.sampler = make_prior_sampler(model, num_candidates=num_candidates)

    def init(self, key: Array, batch_spec: dict[str, jax.ShapeDtypeStruct]) -> Params:
        zeros = {k: jnp.zeros(v.shape, v.dtype) for k, v in batch_spec.items()}
        x = zeros["image_embedding"]
        return self.model.init(
            key,
            x,
            jnp.zeros(x.shape[:1], jnp.int32),
            zeros["text_embedding"],
            zeros["token_states"],
            zeros["text_mask"],
        )["params"]

    def _conditioning(self, batch: Batch, drop: Array | None):
        caption = (batch["text_embedding"], batch["token_states"], batch["text_mask"])
        if drop is None or self.null is None:
            return caption, drop
        return substitute_null(drop, *caption, *self.null), None

    def loss(self, params: Params, batch: Batch, key: Array, train: bool) -> tuple[Array, Metrics]:
        x0 = self.normalizer.normalize(batch["image_embedding"])  # [B, D]
        size = x0.shape[0]
        noise_key, drop_key = jax.random.split(key)
        index, noise, x_t = denoising.noised_batch(self.schedule, noise_key, x0)
        drop = None
        if train and self.text_drop_prob > 0:
            drop = jax.random.bernoulli(drop_key, self.text_drop_prob, (size,))
        caption, drop = self._conditioning(batch, drop)
        prediction = self.model.apply(
            {"params": params}, x_t, self.schedule.timesteps[index], *caption, drop=drop
        )
        weight = None if self.weight is None else functools.partial(self.weight, self.schedule)
        terms = losses.diffusion_loss(
            self.schedule, prediction, x0, x_t, index, noise, mean_type="x0", timestep_weight=weight
        )
        loss = jnp.mean(terms["loss"])
        return loss, {"x0_cosine": jnp.mean(cosine(prediction, x0))}

    def analytic_statistics(self, params: Params, batch: Batch, key: Array) -> tuple[Array, Array]:
        """(Γ [T], data variance []) of the prior on one batch (`analytic.estimate`): its ε,
        converted from its x0 prediction with each row's own caption, at every training timestep
        of the normalised image embeddings."""
        x0 = self.normalizer.normalize(batch["image_embedding"])
        caption, _ = self._conditioning(batch, None)
        variables, model = {"params": params}, self.model
        if model.causal:  # the caption prefix once, not once per timestep
            cache = model.apply(variables, *caption, method=model.encode_prefix)
            denoise = lambda x, t: model.apply(variables, cache, x, t, method=model.step)
        else:
            denoise = lambda x, t: model.apply(variables, x, t, *caption)
        return analytic.estimate(denoise, self.schedule, x0, key, mean_type="x0")

    def evaluate(self, params: Params, batch: Batch, key: Array) -> Metrics:
        loss, metrics = self.loss(params, batch, key, train=False)
        metrics = {"loss": loss, **metrics}
        if self.sample_schedule is None:
            return metrics
        z_i, _ = self.sampler(
            params,
            jax.random.fold_in(key, 1),
            EncodedCaption(batch["text_embedding"], batch["token_states"], batch["text_mask"]),
            self.sample_schedule,
            self.guidance_scale,
            self.normalizer,
            self.null,
        )
        true = batch["image_embedding"]
        metrics["sample_cosine"] = jnp.mean(cosine(z_i, true))
        metrics["text_cosine"] = jnp.mean(cosine(batch["text_embedding"], true))
        return metrics


def build_model(model_config: ml_collections.ConfigDict) -> DiffusionPrior:
    """`DiffusionPrior` from `config.model` (its fields; dtypes by name)."""
    fields = parse_dtypes(model_config)
    known = {f.name for f in dataclasses.fields(DiffusionPrior)} - {"parent", "name"}
    unknown = set(fields) - known
    if unknown:
        raise ValueError(f"config.model has fields {sorted(unknown)} that DiffusionPrior lacks")
    return DiffusionPrior(**fields)


def fit_normalizer(kind: str, image_embeddings: np.ndarray) -> EmbeddingNormalizer:
    """The normaliser `kind`; "mean_std" takes the per-dimension mean and std of the finite rows
    of `image_embeddings` [N, D] (a row with a NaN or inf would poison every statistic)."""
    image_embeddings = np.asarray(image_embeddings, np.float64)
    dim = image_embeddings.shape[-1]
    if kind != "mean_std":
        return EmbeddingNormalizer.create(kind, dim)
    finite = image_embeddings[np.isfinite(image_embeddings).all(axis=1)]
    if not len(finite):
        raise ValueError(f"no finite image embedding among {len(image_embeddings)} rows")
    std = np.maximum(finite.std(axis=0), 1e-6)
    return EmbeddingNormalizer.create(kind, dim, finite.mean(axis=0), std)


def save_normalizer(normalizer: EmbeddingNormalizer, path: str | Path) -> None:
    state = {
        "kind": normalizer.kind,
        "mean": np.asarray(normalizer.mean).tolist(),
        "std": np.asarray(normalizer.std).tolist(),
    }
    epath.Path(path).write_text(json.dumps(state))


def load_normalizer(path: str | Path) -> EmbeddingNormalizer:
    """The saved normaliser; ValueError naming `path` when its statistics are not finite."""
    state = json.loads(epath.Path(path).read_text())
    mean, std = np.asarray(state["mean"], float), np.asarray(state["std"], float)
    if not (np.isfinite(mean).all() and np.isfinite(std).all()):
        raise ValueError(
            f"{path} holds non-finite statistics (written from bad embeddings by an older "
            "version); delete it to fit them again"
        )
    return EmbeddingNormalizer.create(state["kind"], mean.shape[0], mean, std)


def workdir_normalizer(
    kind: str, train_dir: str | Path, workdir: epath.Path, sample: int = 100_000
) -> EmbeddingNormalizer:
    """The normaliser saved in `workdir`, else fitted on (up to `sample`) training embeddings
    and saved there, so that a resumed run and the sampler use the same statistics."""
    path = workdir / NORMALIZER_FILE
    if path.is_file():
        normalizer = load_normalizer(path)
        if normalizer.kind != kind:
            raise ValueError(f"{path} holds a {normalizer.kind!r} normaliser; config asks {kind!r}")
        return normalizer
    shards = EmbeddingShards(train_dir, fields=("image_embedding",))
    rows = np.linspace(0, len(shards) - 1, min(sample, len(shards))).astype(int)
    embeddings = np.stack([shards[int(i)]["image_embedding"] for i in rows])
    _report_nonfinite(shards, rows, embeddings, train_dir)
    normalizer = fit_normalizer(kind, embeddings)
    workdir.mkdir(parents=True, exist_ok=True)
    save_normalizer(normalizer, path)
    return normalizer


def _report_nonfinite(
    shards: EmbeddingShards, rows: np.ndarray, embeddings: np.ndarray, train_dir: str | Path
) -> None:
    """Warns of the rows (of those read) with a non-finite image embedding: their count and the
    first one's shard and row; ValueError, before anything is saved, when every row is bad."""
    bad = np.flatnonzero(~np.isfinite(np.asarray(embeddings, np.float64)).all(axis=1))
    if not len(bad):
        return
    shard, row = shards.location(int(rows[bad[0]]))
    message = (
        f"{len(bad)} of {len(rows)} image embeddings read from {train_dir} are not finite "
        f"(first: {shard} row {row})"
    )
    if len(bad) == len(rows):
        raise ValueError(f"{message}: no statistics can be fitted")
    logging.warning("%s; the normaliser is fitted on the finite rows only", message)


def load_null_caption(path: str | Path) -> NullCaption:
    """The empty caption's encoding from an .npz with `text_embedding` [Dz], `token_states`
    [L, Dt] and `text_mask` [L] (for priors with null_conditioning="empty_caption")."""
    with np.load(path) as data:
        return (
            jnp.asarray(data["text_embedding"], jnp.float32),
            jnp.asarray(data["token_states"], jnp.float32),
            jnp.asarray(data["text_mask"], bool),
        )


def config_null_caption(
    config: ml_collections.ConfigDict, null_conditioning: str
) -> NullCaption | None:
    """The empty caption's encoding a prior with null_conditioning="empty_caption" guides
    with (`config.data.null_caption`); None for learned null tokens."""
    if null_conditioning != "empty_caption":
        return None
    if not config.data.get("null_caption"):
        raise ValueError(
            "null_conditioning='empty_caption' needs config.data.null_caption: an .npz of "
            "the empty caption's text_embedding, token_states and text_mask"
        )
    return load_null_caption(config.data.null_caption)


def build_task(config: ml_collections.ConfigDict, normalizer: EmbeddingNormalizer):
    """The task of a prior config (`model`, `diffusion`, `guidance` sections; with
    null_conditioning="empty_caption", `data.null_caption` names the empty caption's .npz)."""
    diffusion = config.diffusion
    if diffusion.get("prediction", "x0") != "x0":
        raise ValueError(
            f"the diffusion prior predicts x0 (paper §2.1), got {diffusion.prediction!r}"
        )
    sample_steps = config.get("eval", {}).get("sample_steps", 0)
    sample_schedule = None
    if sample_steps:
        sample_schedule = make_schedule(diffusion.schedule, diffusion.train_steps, sample_steps)
    model = build_model(config.model)
    null = config_null_caption(config, model.null_conditioning)
    return DiffusionPriorTask(
        model,
        normalizer,
        make_schedule(diffusion.schedule, diffusion.train_steps),
        text_drop_prob=config.guidance.text_drop_prob,
        null=null,
        sample_schedule=sample_schedule,
        guidance_scale=config.guidance.scale,
        num_candidates=config.guidance.candidates,
        loss_weight=diffusion.get("loss_weight", "uniform"),
        snr_gamma=diffusion.get("snr_gamma", 5.0),
    )


def eval_batches(config: ml_collections.ConfigDict):
    """A factory of fresh eval iterables (the first `config.eval.num_batches` in order), or
    None without `config.data.eval_dir`."""
    if not config.data.get("eval_dir"):
        return None
    num = config.eval.num_batches

    def batches():
        it = embedding_batches(
            config.data.eval_dir,
            batch_size=config.eval.batch_size,
            seed=config.seed,
            num_tokens=config.model.num_tokens,
            shuffle=False,
            num_epochs=1,
        )
        for index, batch in enumerate(it):
            if index >= num:
                break
            yield batch
        it.close()

    return batches


def train_batches(config: ml_collections.ConfigDict):
    """The host-local training batches of a prior config (either prior's) from
    `config.data.train_dir`, checked to be set."""
    if not config.data.get("train_dir"):
        raise ValueError("config.data.train_dir must name a directory of embedding shards")
    return embedding_batches(
        config.data.train_dir,
        batch_size=config.train.batch_size // jax.process_count(),
        seed=config.seed,
        num_tokens=config.model.num_tokens,
    )


def write_analytic_table(
    config: ml_collections.ConfigDict,
    task: DiffusionPriorTask,
    params: Params,
    workdir: epath.Path,
    num_batches: int = 1,
) -> analytic.AnalyticTable:
    """Estimates the prior's Γ table with `params` on the first `num_batches` training batches
    (one jitted program each, sharded as the train step) and saves it as `ANALYTIC_FILE`."""
    mesh = sharding.make_mesh(dict(config.mesh))
    rules = sharding.normalize_rules(config.sharding.rules)
    estimate = step_lib.ShardedStep(
        jax.jit(task.analytic_statistics, out_shardings=sharding.replicated(mesh)), mesh, rules
    )
    key = jax.random.fold_in(jax.random.key(config.seed), 2)  # apart from init/train/eval's
    data = train_batches(config)
    try:
        tables = [
            jax.device_get(
                estimate(params, step_lib.to_global(next(data), mesh), jax.random.fold_in(key, i))
            )
            for i in range(num_batches)
        ]
    finally:
        data.close()
    table = analytic.AnalyticTable.mean(tables, rows=config.train.batch_size)
    if jax.process_index() == 0:
        (workdir / ANALYTIC_FILE).write_text(json.dumps(table.to_dict()))
    logging.info("Γ table of %d examples per timestep saved in %s", table.examples, workdir)
    return table


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
    """Trains the diffusion prior of `config` on `config.data.train_dir` (embedding shards),
    then, for `diffusion.variance="analytic"`, writes its Γ table (`write_analytic_table`)."""
    workdir = location(workdir)
    settings = DiffusionSettings.from_dict(config.diffusion)  # checked before training
    train_data = train_batches(config)
    normalizer = workdir_normalizer(config.embedding_norm, config.data.train_dir, workdir)
    task = build_task(config, normalizer)
    state = loop.train_and_evaluate(config, workdir, task, train_data, eval_batches(config))
    if settings.var_type == "analytic":
        write_analytic_table(config, task, state.ema_params, workdir)
    return state
