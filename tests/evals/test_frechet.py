"""Fréchet distance against closed forms: diagonal Gaussians (‖Δμ‖² + Σ(σ_a − σ_b)²), a rotated
covariance, the sample estimate converging to the Gaussians' value, and any feature function."""

import numpy as np
import pytest

from unclip_jax.evals import frechet


def test_diagonal_gaussians_have_the_closed_form():
    mean_a, mean_b = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    sd_a, sd_b = np.array([1.0, 2.0, 0.5]), np.array([3.0, 2.0, 1.5])
    got = frechet.gaussian_frechet_distance(mean_a, np.diag(sd_a**2), mean_b, np.diag(sd_b**2))
    assert got == pytest.approx(np.sum((mean_a - mean_b) ** 2) + np.sum((sd_a - sd_b) ** 2))


def test_a_rotation_of_the_same_gaussian_moves_it_by_its_covariance_only():
    rng = np.random.default_rng(0)
    rotation, _ = np.linalg.qr(rng.standard_normal((4, 4)))
    cov = np.diag([4.0, 1.0, 0.25, 0.0])  # singular: the square root must cope
    rotated = rotation @ cov @ rotation.T
    assert frechet.gaussian_frechet_distance(np.zeros(4), rotated, np.zeros(4), rotated) == (
        pytest.approx(0.0, abs=1e-9)
    )
    # 2-Wasserstein between N(0, cov) and N(0, I): Σ (σ_i − 1)².
    expected = sum((np.sqrt(v) - 1) ** 2 for v in np.diag(cov))
    got = frechet.gaussian_frechet_distance(np.zeros(4), rotated, np.zeros(4), np.eye(4))
    assert got == pytest.approx(expected, rel=1e-6)  # √ of a zero eigenvalue: ~1e-8


def test_the_sample_estimate_converges_to_the_gaussians_distance():
    rng = np.random.default_rng(1)
    a = rng.normal(0.0, 1.0, (200_000, 3))
    b = rng.normal([0.5, 0.0, 0.0], [2.0, 1.0, 1.0], (200_000, 3))
    assert frechet.frechet_distance(a, b) == pytest.approx(0.25 + 1.0, rel=0.02)
    assert frechet.frechet_distance(a[:100_000], a[100_000:]) < 1e-3  # the floor: same data


def test_any_feature_function_in_batches():
    images = np.random.default_rng(2).random((10, 4, 4, 3))
    calls = []

    def mean_colour(batch):
        calls.append(len(batch))
        return batch.mean(axis=(1, 2))

    got = frechet.frechet_distance_of(mean_colour, images, images[::-1] + 1.0, batch_size=4)
    assert got == pytest.approx(3.0)  # every feature shifted by 1, same covariance
    assert calls == [4, 4, 2, 4, 4, 2]


def test_bad_features_are_refused():
    with pytest.raises(ValueError, match="N >= 2"):
        frechet.frechet_distance(np.zeros((1, 3)), np.zeros((5, 3)))
    with pytest.raises(ValueError, match="one D"):
        frechet.frechet_distance(np.zeros((5, 3)), np.zeros((5, 4)))
