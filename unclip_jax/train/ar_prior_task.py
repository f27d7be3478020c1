"""Training the autoregressive prior (Ramesh et al. 2022, §2.1) from embedding pairs.

The (unit-norm) image embedding is reduced by PCA and each component quantised into buckets
(`models/pca_quantizer.py`); the quantiser is fitted once on the training image embeddings and
saved in the workdir (`ar_quantizers.npz`), so that a resumed run and the sampler decode with the
same one. The prior is trained by teacher forcing with cross-entropy on the codes, conditioned on
the caption tokens, the text embedding and the quantised cosine z_i·z_t; the caption is replaced
by the null conditioning with probability `text_drop_prob` (10%). Sampling conditions on a high
z_i·z_t: the bucket of the training cosines' `sample_dot_quantile`.

Batches are those of the diffusion prior (`prior_task.BATCH_FIELDS`).

    unclip train --config=configs/ar_prior_demo.py --workdir=workdirs/ar_prior_demo \
        --config.data.train_dir=embeddings/train --config.data.eval_dir=embeddings/test
"""

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import struct

from unclip_jax.data.embedding_shards import EmbeddingShards
from unclip_jax.models import pca_quantizer
from unclip_jax.models.ar_prior import ARPrior, ar_prior_loss
from unclip_jax.models.pca_quantizer import PCAQuantizer, UniformQuantizer
from unclip_jax.models.prior import check_null_given, substitute_null
from unclip_jax.sampling.prior import NullCaption
from unclip_jax.train import loop, prior_task
from unclip_jax.train.state import TrainState
from unclip_jax.train.task import Batch, Metrics, Params, Task, check_probability

Array = jax.Array
QUANTIZERS_FILE = "ar_quantizers.npz"


def unit(z: Array) -> Array:  # [..., D] -> [..., D] with unit norm
    z = jnp.asarray(z, jnp.float32)
    return z * jax.lax.rsqrt(jnp.sum(z * z, axis=-1, keepdims=True) + 1e-12)


class ARQuantizers(struct.PyTreeNode):
    """The codes the AR prior predicts and the z_i·z_t token it is conditioned on."""

    pca: PCAQuantizer  # unit-norm image embedding [D] -> K codes
    dot: UniformQuantizer  # cosine(z_i, z_t), one channel -> bucket
    sample_dot_bucket: Array  # [] int32, the bucket sampling conditions on

    def codes(self, image_embedding: Array) -> Array:  # [B, D] -> [B, K] int32
        return self.pca.encode(unit(image_embedding))

    def dot_bucket(self, image_embedding: Array, text_embedding: Array) -> Array:  # -> [B]
        cosine = jnp.sum(unit(image_embedding) * unit(text_embedding), axis=-1)
        return self.dot.encode(cosine[:, None])[:, 0]


def fit_quantizers(
    image_embeddings: np.ndarray,  # [N, D]
    text_embeddings: np.ndarray,  # [N, D]
    *,
    num_components: int | None = None,  # None: the fewest covering `variance_fraction`
    variance_fraction: float = 0.99,
    num_buckets: int = 1024,
    num_dot_buckets: int = 64,
    quantile: float = 0.0,
    sample_dot_quantile: float = 0.9,
) -> ARQuantizers:
    """PCA + buckets on the unit-norm image embeddings; buckets of the cosines z_i·z_t."""
    check_probability("sample_dot_quantile", sample_dot_quantile)
    image = np.asarray(unit(jnp.asarray(image_embeddings, jnp.float32)))
    text = np.asarray(unit(jnp.asarray(text_embeddings, jnp.float32)))
    pca = pca_quantizer.fit_pca_quantizer(
        image, num_components, variance_fraction, num_buckets, quantile
    )
    cosines = np.sum(image * text, axis=-1)
    dot = pca_quantizer.fit_uniform_quantizer(cosines[:, None], num_dot_buckets)
    target = np.quantile(cosines, sample_dot_quantile)
    bucket = dot.encode(jnp.asarray([[target]], jnp.float32))[0, 0]
    return ARQuantizers(pca=pca, dot=dot, sample_dot_bucket=jnp.asarray(bucket, jnp.int32))


def save_quantizers(quantizers: ARQuantizers, path: str | Path) -> None:
    pca = quantizers.pca
    np.savez(
        path,
        mean=np.asarray(pca.mean),
        components=np.asarray(pca.components),
        explained_variance=np.asarray(pca.explained_variance),
        low=np.asarray(pca.quantizer.low),
        high=np.asarray(pca.quantizer.high),
        num_buckets=pca.num_buckets,
        dot_low=np.asarray(quantizers.dot.low),
        dot_high=np.asarray(quantizers.dot.high),
        num_dot_buckets=quantizers.dot.num_buckets,
        sample_dot_bucket=np.asarray(quantizers.sample_dot_bucket),
    )


def load_quantizers(path: str | Path) -> ARQuantizers:
    with np.load(path) as f:
        a = {k: f[k] for k in f.files}
    pca = PCAQuantizer(
        mean=jnp.asarray(a["mean"]),
        components=jnp.asarray(a["components"]),
        explained_variance=jnp.asarray(a["explained_variance"]),
        quantizer=UniformQuantizer(
            jnp.asarray(a["low"]), jnp.asarray(a["high"]), int(a["num_buckets"])
        ),
    )
    dot = UniformQuantizer(
        jnp.asarray(a["dot_low"]), jnp.asarray(a["dot_high"]), int(a["num_dot_buckets"])
    )
    return ARQuantizers(pca, dot, jnp.asarray(a["sample_dot_bucket"], jnp.int32))


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
    fields = dict(config.model)
    for name in ("dtype", "param_dtype"):
        if name in fields:
            fields[name] = jnp.dtype(fields[name])
    sized = {"num_codes", "num_buckets", "num_dot_buckets"}
    known = {f.name for f in dataclasses.fields(ARPrior)} - {"parent", "name"} - sized
    unknown = set(fields) - known
    if unknown:
        raise ValueError(
            f"config.model has fields {sorted(unknown)} that ARPrior lacks (code and bucket "
            "counts come from config.quantizer)"
        )
    return ARPrior(
        num_codes=quantizers.pca.num_components,
        num_buckets=quantizers.pca.num_buckets,
        num_dot_buckets=quantizers.dot.num_buckets,
        **fields,
    )


def workdir_quantizers(
    config: ml_collections.ConfigDict, workdir: Path, sample: int = 100_000
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
    workdir = Path(workdir).absolute()
    train_data = prior_task.train_batches(config)
    task = build_task(config, workdir_quantizers(config, workdir))
    return loop.train_and_evaluate(
        config, workdir, task, train_data, prior_task.eval_batches(config)
    )
