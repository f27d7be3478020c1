"""Training the autoregressive prior (Ramesh et al. 2022, §2.1) from embedding pairs.

The (unit-norm) image embedding is reduced by PCA and each component quantised into buckets
(`models/pca_quantizer.py`); the quantiser is fitted once on the training image embeddings and
saved in the workdir (`ar_quantizers.npz`), so that a resumed run and the sampler decode with the
same one. The prior is trained by teacher forcing with cross-entropy on the codes, conditioned on
the caption tokens, the text embedding and the quantised cosine z_i·z_t; the caption is replaced
by the null conditioning with probability `text_drop_prob` (10%). The quantizers keep the
histogram of the training z_i·z_t buckets: sampling draws the token from its top half
(`sampling/ar_prior.py`), or fixes it at the bucket of `sample_dot_quantile`.

Batches are those of the diffusion prior (`prior_task.BATCH_FIELDS`).

    unclip train --config=configs/ar_prior_demo.py --workdir=workdirs/ar_prior_demo \
        --config.data.train_dir=embeddings/train --config.data.eval_dir=embeddings/test
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath

from unclip_jax.data.embedding_shards import EmbeddingShards
from unclip_jax.models.ar_prior import ARPrior, ar_prior_from_config, ar_prior_loss
from unclip_jax.models.pca_quantizer import (
    ARQuantizers,
    fit_quantizers,
    load_quantizers,
    save_quantizers,
)
from unclip_jax.models.prior import check_null_given, substitute_null
from unclip_jax.sampling.prior import NullCaption
from unclip_jax.storage.locations import location
from unclip_jax.train import loop, prior_task
from unclip_jax.train.state import TrainState
from unclip_jax.train.task import Batch, Metrics, Params, Task, check_probability

Array = jax.Array
QUANTIZERS_FILE = "ar_quantizers.npz"


class ARPriorTask(Task):
    """Teacher-forced cross-entropy of the PCA codes, with caption dropout.

    `null` is the empty caption's (embedding [Dz], token states [L, Dt], mask [L]) for models
    whose null conditioning is "empty_caption"; models with learned null tokens take None.
    """

    def __init__(
        self,
        model: ARPrior,
        quantizers: ARQuantizers,
        text_drop_prob: float = 0.1,
        null: NullCaption | None = None,
    ):
        check_probability("text_drop_prob", text_drop_prob)
        check_null_given(null, model.null_conditioning)
        want = (
            quantizers.pca.num_components,
            quantizers.pca.num_buckets,
            quantizers.dot.num_buckets,
        )
        have = (model.num_codes, model.num_buckets, model.num_dot_buckets)
        if want != have:
            raise ValueError(
                f"the quantizers give (codes, buckets, dot buckets) = {want}; the model has {have}"
            )
        self.model = model
        self.quantizers = quantizers
        self.text_drop_prob = text_drop_prob
        self.null = null

    def init(self, key: Array, batch_spec: dict[str, jax.ShapeDtypeStruct]) -> Params:
        zeros = {k: jnp.zeros(v.shape, v.dtype) for k, v in batch_spec.items()}
        size = batch_spec["image_embedding"].shape[0]
        return self.model.init(
            key,
            jnp.zeros((size, self.model.num_codes), jnp.int32),
            jnp.zeros((size,), jnp.int32),
            zeros["text_embedding"],
            zeros["token_states"],
            zeros["text_mask"],
        )["params"]

    def loss(self, params: Params, batch: Batch, key: Array, train: bool) -> tuple[Array, Metrics]:
        codes = self.quantizers.codes(batch["image_embedding"])  # [B, K]
        dot = self.quantizers.dot_bucket(batch["image_embedding"], batch["text_embedding"])
        caption = (batch["text_embedding"], batch["token_states"], batch["text_mask"])
        drop = None
        if train and self.text_drop_prob > 0:
            drop = jax.random.bernoulli(key, self.text_drop_prob, (codes.shape[0],))
            if self.null is not None:
                caption, drop = substitute_null(drop, *caption, *self.null), None
        logits = self.model.apply({"params": params}, codes, dot, *caption, drop=drop)
        loss, metrics = ar_prior_loss(logits, codes)
        return loss, {"accuracy": metrics["accuracy"]}


def build_model(config: ml_collections.ConfigDict, quantizers: ARQuantizers) -> ARPrior:
    """`ARPrior` from `config.model`, with the code and bucket counts of the quantizers."""
    sized = {"num_codes", "num_buckets", "num_dot_buckets"} & set(config.model)
    if sized:
        raise ValueError(
            f"config.model has fields {sorted(sized)}: code and bucket counts come from "
            "config.quantizer"
        )
    return ar_prior_from_config(
        config.model,
        num_codes=quantizers.pca.num_components,
        num_buckets=quantizers.pca.num_buckets,
        num_dot_buckets=quantizers.dot.num_buckets,
    )


def workdir_quantizers(
    config: ml_collections.ConfigDict, workdir: epath.Path, sample: int = 100_000
) -> ARQuantizers:
    """The quantizers saved in `workdir`, else fitted on (up to `sample`) training pairs of
    `config.data.train_dir` as `config.quantizer` says, and saved there."""
    path = workdir / QUANTIZERS_FILE
    if path.is_file():
        return load_quantizers(path)
    shards = EmbeddingShards(config.data.train_dir, fields=("image_embedding", "text_embedding"))
    rows = np.linspace(0, len(shards) - 1, min(sample, len(shards))).astype(int)
    pairs = [shards[int(i)] for i in rows]
    q = config.quantizer
    quantizers = fit_quantizers(
        np.stack([p["image_embedding"] for p in pairs]),
        np.stack([p["text_embedding"] for p in pairs]),
        num_components=q.num_components or None,
        variance_fraction=q.variance_fraction,
        num_buckets=q.num_buckets,
        num_dot_buckets=q.num_dot_buckets,
        quantile=q.quantile,
        sample_dot_quantile=q.sample_dot_quantile,
    )
    workdir.mkdir(parents=True, exist_ok=True)
    save_quantizers(quantizers, path)
    return quantizers


def build_task(config: ml_collections.ConfigDict, quantizers: ARQuantizers) -> ARPriorTask:
    model = build_model(config, quantizers)
    null = prior_task.config_null_caption(config, model.null_conditioning)
    return ARPriorTask(model, quantizers, config.guidance.text_drop_prob, null)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
    """Fits (or reloads) the quantizers, then trains the AR prior on `config.data.train_dir`."""
    workdir = location(workdir)
    train_data = prior_task.train_batches(config)
    task = build_task(config, workdir_quantizers(config, workdir))
    return loop.train_and_evaluate(
        config, workdir, task, train_data, prior_task.eval_batches(config)
    )
