"""PCA + per-component uniform quantisation of CLIP image embeddings, for the AR prior.

Paper §2.1: the image embeddings are reduced by PCA (319 of 1024 dimensions keep nearly all the
information) and each principal component is quantised into 1024 discrete buckets; the AR prior
predicts the resulting code sequence. Fitting is NumPy on the host; encode/decode are jnp and
can run inside compiled code.

Buckets are uniform over each component's fitted range [low, high]: a value inside the range is
reconstructed within half a bucket, (high − low) / (2 · num_buckets); values outside are clipped.

`ARQuantizers` holds what an AR prior is trained and sampled with: the PCA codes of the unit-norm
image embedding, the buckets of z_i·z_t with their training histogram (sampling draws the token
from its top half), and the training embeddings' mean norm (samples are decoded at that scale).
"""

import io
import os

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from flax import struct

Array = jax.Array


class UniformQuantizer(struct.PyTreeNode):
    """`num_buckets` equal buckets over [low, high] per channel; codes are int32 bucket indices."""

    low: Array  # [K]
    high: Array  # [K]
    num_buckets: int = struct.field(pytree_node=False, default=1024)

    def encode(self, x: Array) -> Array:  # [..., K] float -> [..., K] int32
        position = (jnp.asarray(x, jnp.float32) - self.low) / (self.high - self.low)
        codes = jnp.floor(position * self.num_buckets).astype(jnp.int32)
        return jnp.clip(codes, 0, self.num_buckets - 1)

    def decode(self, codes: Array) -> Array:  # [..., K] int -> [..., K] bucket centres
        return self.low + (jnp.asarray(codes, jnp.float32) + 0.5) / self.num_buckets * (
            self.high - self.low
        )

    @property
    def max_error(self) -> Array:  # [K], the largest reconstruction error inside the range
        return (self.high - self.low) / (2 * self.num_buckets)


def fit_uniform_quantizer(
    values: np.ndarray,  # [N, K] (or [N] for a single channel)
    num_buckets: int = 1024,
    quantile: float = 0.0,  # clip this fraction of outliers at each end (0: the data's min/max)
) -> UniformQuantizer:
    """Buckets spanning the data (between its `quantile` and `1 − quantile` quantiles)."""
    if num_buckets < 2:
        raise ValueError(f"num_buckets must be >= 2, got {num_buckets}")
    if not 0.0 <= quantile < 0.5:
        raise ValueError(f"quantile must be in [0, 0.5), got {quantile}")
    values = np.asarray(values, np.float64)
    low = np.quantile(values, quantile, axis=0)
    high = np.quantile(values, 1.0 - quantile, axis=0)
    high = np.maximum(high, low + 1e-6)  # a constant channel still gets a valid range
    return UniformQuantizer(
        low=jnp.asarray(low, jnp.float32),
        high=jnp.asarray(high, jnp.float32),
        num_buckets=num_buckets,
    )


class PCAQuantizer(struct.PyTreeNode):
    """z [.., D] -> K principal components -> K codes in [0, num_buckets), and back."""

    mean: Array  # [D]
    components: Array  # [K, D], orthonormal rows, by decreasing variance
    explained_variance: Array  # [K], variance of each component on the fitting data
    quantizer: UniformQuantizer  # over the K component coefficients

    @property
    def num_components(self) -> int:
        return self.components.shape[0]

    @property
    def num_buckets(self) -> int:
        return self.quantizer.num_buckets

    def project(self, z: Array) -> Array:  # [..., D] -> [..., K]
        return (jnp.asarray(z, jnp.float32) - self.mean) @ self.components.T

    def reconstruct(self, coefficients: Array) -> Array:  # [..., K] -> [..., D]
        return coefficients @ self.components + self.mean

    def encode(self, z: Array) -> Array:  # [..., D] -> [..., K] int32
        return self.quantizer.encode(self.project(z))

    def decode(self, codes: Array) -> Array:  # [..., K] int -> [..., D]
        return self.reconstruct(self.quantizer.decode(codes))


def fit_pca_quantizer(
    embeddings: np.ndarray,  # [N, D]
    num_components: int | None = None,  # default: the fewest covering `variance_fraction`
    variance_fraction: float = 0.99,
    num_buckets: int = 1024,
    quantile: float = 0.0,
) -> PCAQuantizer:
    """PCA of `embeddings` and uniform buckets over each kept component's range."""
    embeddings = np.asarray(embeddings, np.float64)
    if embeddings.ndim != 2 or embeddings.shape[0] < 2:
        raise ValueError(f"embeddings must be [N >= 2, D], got shape {embeddings.shape}")
    if not 0.0 < variance_fraction <= 1.0:
        raise ValueError(f"variance_fraction must be in (0, 1], got {variance_fraction}")
    count, dim = embeddings.shape
    mean = embeddings.mean(axis=0)
    _, singular, components = np.linalg.svd(embeddings - mean, full_matrices=False)
    variance = singular**2 / (count - 1)
    if num_components is None:
        cumulative = np.cumsum(variance) / variance.sum()
        num_components = int(np.searchsorted(cumulative, variance_fraction - 1e-12) + 1)
    if not 1 <= num_components <= min(count, dim):
        raise ValueError(
            f"num_components must be in [1, {min(count, dim)}] for {count} embeddings of width "
            f"{dim}, got {num_components}"
        )
    components = components[:num_components]
    coefficients = (embeddings - mean) @ components.T
    return PCAQuantizer(
        mean=jnp.asarray(mean, jnp.float32),
        components=jnp.asarray(components, jnp.float32),
        explained_variance=jnp.asarray(variance[:num_components], jnp.float32),
        quantizer=fit_uniform_quantizer(coefficients, num_buckets, quantile),
    )


def unit(z: Array) -> Array:  # [..., D] -> [..., D] with unit norm
    z = jnp.asarray(z, jnp.float32)
    return z * jax.lax.rsqrt(jnp.sum(z * z, axis=-1, keepdims=True) + 1e-12)


class ARQuantizers(struct.PyTreeNode):
    """The codes the AR prior predicts and the z_i·z_t token it is conditioned on."""

    pca: PCAQuantizer  # unit-norm image embedding [D] -> K codes
    dot: UniformQuantizer  # cosine(z_i, z_t), one channel -> bucket
    sample_dot_bucket: Array  # [] int32, the bucket of `sample_dot_quantile` of the cosines
    # [Vd] training pairs per z_i·z_t bucket; None in files written before it was kept.
    dot_counts: Array | None = None
    # [] mean norm of the training image embeddings; None (files before it): 1.
    image_norm: Array | None = None

    @property
    def num_components(self) -> int:
        return self.pca.num_components

    def codes(self, image_embedding: Array) -> Array:  # [B, D] -> [B, K] int32
        return self.pca.encode(unit(image_embedding))

    def dot_bucket(self, image_embedding: Array, text_embedding: Array) -> Array:  # -> [B]
        cosine = jnp.sum(unit(image_embedding) * unit(text_embedding), axis=-1)
        return self.dot.encode(cosine[:, None])[:, 0]

    def decode(self, codes: Array) -> Array:  # [..., K] int -> z_i [..., D] at the data's norm
        z = self.pca.decode(codes)
        return z if self.image_norm is None else z * self.image_norm


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
    """PCA + buckets on the unit-norm image embeddings; buckets of the cosines z_i·z_t and how
    many training pairs fall in each."""
    if not 0.0 <= sample_dot_quantile <= 1.0:
        raise ValueError(f"sample_dot_quantile must be in [0, 1], got {sample_dot_quantile}")
    image = np.asarray(unit(jnp.asarray(image_embeddings, jnp.float32)))
    text = np.asarray(unit(jnp.asarray(text_embeddings, jnp.float32)))
    pca = fit_pca_quantizer(image, num_components, variance_fraction, num_buckets, quantile)
    cosines = np.sum(image * text, axis=-1)
    dot = fit_uniform_quantizer(cosines[:, None], num_dot_buckets)
    target = np.quantile(cosines, sample_dot_quantile)
    bucket = dot.encode(jnp.asarray([[target]], jnp.float32))[0, 0]
    buckets = np.asarray(dot.encode(jnp.asarray(cosines[:, None], jnp.float32)))[:, 0]
    norms = np.linalg.norm(np.asarray(image_embeddings, np.float64), axis=-1)
    return ARQuantizers(
        pca=pca,
        dot=dot,
        sample_dot_bucket=jnp.asarray(bucket, jnp.int32),
        dot_counts=jnp.asarray(np.bincount(buckets, minlength=num_dot_buckets), jnp.float32),
        image_norm=jnp.asarray(norms.mean(), jnp.float32),
    )


def save_quantizers(quantizers: ARQuantizers, path: str | os.PathLike) -> None:
    """The quantizers as an .npz file at `path` (local or a URI)."""
    pca = quantizers.pca
    optional = {
        name: np.asarray(getattr(quantizers, name))
        for name in ("dot_counts", "image_norm")
        if getattr(quantizers, name) is not None
    }
    file = io.BytesIO()  # written whole: a path to np.savez would gain ".npz"
    np.savez(
        file,
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
        **optional,
    )
    epath.Path(path).write_bytes(file.getvalue())


def load_quantizers(path: str | os.PathLike) -> ARQuantizers:
    """The quantizers of `save_quantizers` (local or a URI); files without the histogram or the
    norm (written before they were kept) load with None there."""
    with np.load(io.BytesIO(epath.Path(path).read_bytes())) as f:
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
    optional = {k: jnp.asarray(a[k], jnp.float32) for k in ("dot_counts", "image_norm") if k in a}
    return ARQuantizers(pca, dot, jnp.asarray(a["sample_dot_bucket"], jnp.int32), **optional)
