"""Per-caption diversity of embeddings against closed forms."""

import numpy as np
import pytest

from unclip_jax.evals import diversity


def test_identical_samples_have_no_spread():
    group = np.tile(np.array([[0.3, -1.2, 2.0, 0.5]]), (5, 1))
    result = diversity.group_diversity(group[None])
    np.testing.assert_allclose(result.centroid_distance, [0.0], atol=1e-7)
    np.testing.assert_allclose(result.pairwise_distance, [0.0], atol=1e-12)


def test_two_orthogonal_unit_vectors():
    pair = np.eye(3)[None, :2]  # [1, 2, 3]
    result = diversity.group_diversity(pair)
    np.testing.assert_allclose(result.centroid_distance, [1 / np.sqrt(2)])
    np.testing.assert_allclose(result.pairwise_distance, [1.0])


def test_orthonormal_basis_reaches_the_largest_pairwise_distance_of_its_size():
    """K orthonormal vectors: 1 − cos = 1 for every pair; their centroid is 1/K of each, at
    distance √(1 − 1/K); K opposite pairs (u, −u) give the maximum K/(K−1)."""
    k = 4
    result = diversity.group_diversity(np.eye(k)[None])
    np.testing.assert_allclose(result.pairwise_distance, [1.0])
    np.testing.assert_allclose(result.centroid_distance, [np.sqrt(1 - 1 / k)])
    opposite = np.concatenate([np.eye(2), -np.eye(2)])[None]  # [1, 4, 2], sum 0
    np.testing.assert_allclose(diversity.pairwise_distance(opposite), [k / (k - 1)])


def test_pairwise_is_the_mean_over_pairs_and_the_trace_of_the_covariance():
    x = np.random.default_rng(0).normal(size=(3, 6, 5))
    u = x / np.linalg.norm(x, axis=-1, keepdims=True)
    result = diversity.group_diversity(x)
    for g in range(3):
        pairs = [1 - u[g, i] @ u[g, j] for i in range(6) for j in range(i + 1, 6)]
        np.testing.assert_allclose(result.pairwise_distance[g], np.mean(pairs))
        np.testing.assert_allclose(result.pairwise_distance[g], np.trace(np.cov(u[g].T)))
        centre = u[g].mean(0)
        want = np.linalg.norm(u[g] - centre, axis=-1).mean()
        np.testing.assert_allclose(result.centroid_distance[g], want)


def test_scaling_samples_changes_nothing():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 4, 8))
    scales = rng.uniform(0.01, 100, size=(2, 4, 1))
    a, b = diversity.group_diversity(x), diversity.group_diversity(x * scales)
    np.testing.assert_allclose(a.centroid_distance, b.centroid_distance)
    np.testing.assert_allclose(a.pairwise_distance, b.pairwise_distance)


def test_group_ids_give_the_same_as_stacked_groups_and_allow_uneven_sizes():
    x = np.random.default_rng(2).normal(size=(3, 4, 6))
    order = np.random.default_rng(3).permutation(12)
    flat, ids = x.reshape(12, 6)[order], np.repeat(["c", "a", "b"], 4)[order]
    by_id = diversity.group_diversity(flat, ids)
    stacked = diversity.group_diversity(x)
    assert list(by_id.labels) == ["a", "b", "c"]
    np.testing.assert_allclose(by_id.pairwise_distance, stacked.pairwise_distance[[1, 2, 0]])
    np.testing.assert_allclose(by_id.centroid_distance, stacked.centroid_distance[[1, 2, 0]])
    uneven = diversity.group_diversity(np.eye(3), np.array([7, 7, 9]))
    np.testing.assert_array_equal(uneven.counts, [2, 1])
    np.testing.assert_allclose(uneven.pairwise_distance[0], 1.0)
    assert np.isnan(uneven.pairwise_distance[1]) and uneven.centroid_distance[1] == 0
    assert uneven.mean() == pytest.approx(
        {"centroid_distance": 0.5 / np.sqrt(2), "pairwise_distance": 1.0}
    )


def test_bad_shapes_and_zero_vectors_are_refused():
    with pytest.raises(ValueError, match=r"\[G, K, D\]"):
        diversity.group_diversity(np.ones((4, 3)))
    with pytest.raises(ValueError, match=r"group_ids must be \[N\]"):
        diversity.group_diversity(np.ones((4, 3)), np.zeros(5))
    with pytest.raises(ValueError, match="nonzero"):
        diversity.group_diversity(np.zeros((1, 2, 3)))
