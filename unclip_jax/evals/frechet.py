"""Fréchet distance between two sets of features (Heusel et al. 2017): the 2-Wasserstein distance
between the Gaussians with the sets' means and covariances,

    FD² = ‖μ_a − μ_b‖² + Tr(Σ_a + Σ_b − 2 (Σ_a Σ_b)^½).

With a CLIP image encoder as the feature function it is FD in CLIP space (the study's measure);
with Inception-v3 pool features it is FID. Host-side NumPy in float64. The matrix square root's
trace is taken as Σ √λ over the eigenvalues of Σ_a^½ Σ_b Σ_a^½ (symmetric, positive
semi-definite), which needs no complex arithmetic.

    fd = frechet_distance(features(samples), features(held_out))
    fd = frechet_distance_of(score_clip.encode_image, samples, held_out, batch_size=256)
"""

from collections.abc import Callable

import numpy as np


def gaussian_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean [D], unbiased covariance [D, D]) of features [N, D], N ≥ 2."""
    x = np.asarray(features, np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"features must be [N, D] with N >= 2, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("features must be finite")
    return x.mean(axis=0), np.cov(x, rowvar=False).reshape(x.shape[1], x.shape[1])


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def gaussian_frechet_distance(
    mean_a: np.ndarray, cov_a: np.ndarray, mean_b: np.ndarray, cov_b: np.ndarray
) -> float:
    """FD² between N(mean_a, cov_a) and N(mean_b, cov_b): means [D], covariances [D, D]."""
    root_a = _psd_sqrt(np.asarray(cov_a, np.float64))
    middle = root_a @ np.asarray(cov_b, np.float64) @ root_a
    cross = np.sum(np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0.0, None)))
    shift = np.sum((np.asarray(mean_a, np.float64) - np.asarray(mean_b, np.float64)) ** 2)
    return float(max(shift + np.trace(cov_a) + np.trace(cov_b) - 2.0 * cross, 0.0))


def frechet_distance(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """FD² between feature sets [N_a, D] and [N_b, D] (compare sets of equal N: the estimate is
    biased upward by roughly Tr(Σ)·(1/N_a + 1/N_b))."""
    a, b = np.asarray(features_a), np.asarray(features_b)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"feature sets must be [N, D] of one D, got {a.shape} and {b.shape}")
    return gaussian_frechet_distance(*gaussian_statistics(a), *gaussian_statistics(b))


def frechet_distance_of(
    features: Callable[[np.ndarray], np.ndarray],
    images_a: np.ndarray,
    images_b: np.ndarray,
    batch_size: int = 256,
) -> float:
    """FD² between two image sets [N, H, W, C] in the space of `features(images) -> [n, D]`
    (a CLIP image encoder, Inception pool features, ...), applied in batches."""

    def embed(images: np.ndarray) -> np.ndarray:
        parts = [
            np.asarray(features(images[i : i + batch_size]))
            for i in range(0, len(images), batch_size)
        ]
        return np.concatenate(parts)

    return frechet_distance(embed(images_a), embed(images_b))
