"""Diversity of generated embeddings per caption: how far a caption's samples spread.

Samples are compared by direction only: every embedding is first divided by its L2 norm (CLIP
embeddings are compared by cosine), so scaling a sample changes nothing. Two measures per
caption group of K samples with unit vectors u_1 … u_K and centroid ū = mean_k u_k:

- `centroid_distance`: mean_k ‖u_k − ū‖₂, the spread around the group's centre (0 for
  identical samples; 1/√2 for two orthogonal ones).
- `pairwise_distance`: the mean over the K(K−1)/2 pairs of (1 − cos(u_i, u_j)), i.e. of
  ‖u_i − u_j‖² / 2 (0 for identical samples; 1 for orthogonal ones; at most K/(K−1)). It equals
  the trace of the unbiased (ddof = 1) covariance of the unit vectors, the "spread" of
  `experiments/prior_learning.py`, and is computed without forming the pairs:
  (K − ‖Σ_k u_k‖² / K) / (K − 1).

Groups are given as `[G, K, D]` (K samples per caption) or as `[N, D]` with `group_ids` [N]
(any labels; groups may differ in size). A group of one sample has no pairs: its pairwise
distance is NaN. Host-side NumPy in float64, for evaluation scripts and commands.
"""

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class GroupDiversity:
    """Per-group measures, groups in the order of `labels` (sorted unique ids, or 0 … G−1)."""

    labels: np.ndarray  # [G]
    counts: np.ndarray  # [G] int, samples per group
    centroid_distance: np.ndarray  # [G] mean ‖u_k − ū‖₂
    pairwise_distance: np.ndarray  # [G] mean over pairs of 1 − cos; NaN for a single sample

    def mean(self) -> dict[str, float]:
        """Unweighted means over groups (pairwise over groups of two or more samples)."""
        pairwise = self.pairwise_distance[~np.isnan(self.pairwise_distance)]
        return {
            "centroid_distance": float(np.mean(self.centroid_distance)),
            "pairwise_distance": float(np.mean(pairwise)) if pairwise.size else float("nan"),
        }


def unit_vectors(embeddings: np.ndarray) -> np.ndarray:
    """[..., D] → [..., D] float64 with unit L2 norm; a zero vector is refused."""
    x = np.asarray(embeddings, np.float64)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    if not np.all(norms > 0):
        raise ValueError("embeddings must be nonzero vectors to be compared by direction")
    return x / norms


def _as_flat(
    embeddings: np.ndarray, group_ids: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(unit vectors [N, D], group index [N] in 0 … G−1, labels [G])."""
    x = np.asarray(embeddings)
    if group_ids is None:
        if x.ndim != 3:
            raise ValueError(f"embeddings without group_ids must be [G, K, D], got {x.shape}")
        groups, per_group = x.shape[:2]
        index = np.repeat(np.arange(groups), per_group)
        return unit_vectors(x.reshape(groups * per_group, -1)), index, np.arange(groups)
    if x.ndim != 2:
        raise ValueError(f"embeddings with group_ids must be [N, D], got shape {x.shape}")
    ids = np.asarray(group_ids)
    if ids.shape != x.shape[:1]:
        raise ValueError(f"group_ids must be [N] = [{x.shape[0]}], got shape {ids.shape}")
    labels, index = np.unique(ids, return_inverse=True)
    return unit_vectors(x), index.reshape(-1), labels


def group_diversity(embeddings: np.ndarray, group_ids: np.ndarray | None = None) -> GroupDiversity:
    """Both measures per group of `embeddings` [G, K, D], or [N, D] grouped by `group_ids` [N]."""
    u, index, labels = _as_flat(embeddings, group_ids)
    groups = len(labels)
    counts = np.bincount(index, minlength=groups)
    sums = np.zeros((groups, u.shape[1]))
    np.add.at(sums, index, u)  # [G, D]
    centroids = sums / counts[:, None]
    distances = np.linalg.norm(u - centroids[index], axis=-1)  # [N]
    centroid_distance = np.bincount(index, weights=distances, minlength=groups) / counts
    squared_sum = np.sum(sums * sums, axis=-1)  # ‖Σ u‖², [G]
    with np.errstate(divide="ignore", invalid="ignore"):
        pairwise = (counts - squared_sum / counts) / (counts - 1)
    pairwise = np.where(counts > 1, np.maximum(pairwise, 0.0), np.nan)
    return GroupDiversity(labels, counts, centroid_distance, pairwise)


def centroid_distance(embeddings: np.ndarray, group_ids: np.ndarray | None = None) -> np.ndarray:
    """[G] mean distance of each sample's unit vector to its group's centroid."""
    return group_diversity(embeddings, group_ids).centroid_distance


def pairwise_distance(embeddings: np.ndarray, group_ids: np.ndarray | None = None) -> np.ndarray:
    """[G] mean over a group's pairs of 1 − cosine (NaN for a group of one sample)."""
    return group_diversity(embeddings, group_ids).pairwise_distance
