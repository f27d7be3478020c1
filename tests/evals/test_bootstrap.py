"""Bootstrap over seeds then captions: the width of Bernoulli intervals against the closed form,
coverage near the nominal level, the extra width from seed-to-seed variation, pairing, and the
verdict rule."""

import numpy as np
import pytest

from unclip_jax.evals import bootstrap


def test_one_seed_of_bernoulli_captions_has_the_binomial_standard_error():
    rng = np.random.default_rng(0)
    hits = (rng.random(400) < 0.7).astype(float)
    reps = bootstrap.bootstrap_means(hits, replicates=4000, rng=rng)
    p = hits.mean()
    assert reps.std() == pytest.approx(np.sqrt(p * (1 - p) / 400), rel=0.08)


def test_intervals_cover_the_true_mean_at_about_the_nominal_level():
    rng = np.random.default_rng(1)
    covered = 0
    trials = 200
    for _ in range(trials):
        values = rng.normal(0.5, 1.0, (1, 100))
        low, high = bootstrap.interval(bootstrap.bootstrap_means(values, 1000, rng))
        covered += low <= 0.5 <= high
    assert 0.88 <= covered / trials <= 0.99


def test_seed_to_seed_variation_widens_the_interval():
    rng = np.random.default_rng(2)
    captions = rng.normal(0.0, 1.0, 200)
    same_seeds = np.stack([captions] * 4)
    varied_seeds = same_seeds + np.array([[-1.0], [0.0], [1.0], [2.0]])
    narrow = np.diff(bootstrap.interval(bootstrap.bootstrap_means(same_seeds, rng=rng)))
    wide = np.diff(bootstrap.interval(bootstrap.bootstrap_means(varied_seeds, rng=rng)))
    assert wide > 3 * narrow


def test_pairing_removes_the_captions_common_difficulty():
    rng = np.random.default_rng(3)
    difficulty = rng.normal(0.0, 3.0, 300)
    a, b = difficulty + 0.2, difficulty + rng.normal(0.0, 0.1, 300)
    paired = bootstrap.interval(bootstrap.bootstrap_difference(a, b, rng=rng))
    unpaired = bootstrap.interval(bootstrap.bootstrap_difference(a, b, rng=rng, paired=False))
    assert paired[0] > 0  # a > b is resolved only when the captions are shared
    assert unpaired[0] < 0 < unpaired[1]


def test_the_verdict_rule():
    assert bootstrap.verdict((0.1, 0.3), +1) == "reproduced"
    assert bootstrap.verdict((0.1, 0.3), -1) == "not reproduced"
    assert bootstrap.verdict((-0.3, -0.1), -1) == "reproduced"
    assert bootstrap.verdict((-0.1, 0.3), +1) == "inconclusive"
    with pytest.raises(ValueError, match="direction"):
        bootstrap.verdict((0.1, 0.3), 0)
    with pytest.raises(ValueError, match=r"\[seeds, captions\]"):
        bootstrap.bootstrap_means(np.zeros((2, 2, 2)))


def test_resampled_figures_draw_seeds_around_each_resample():
    """One seed: the replicates are its resamples; two seeds at ±1 without resample noise: the
    replicate means are −1, 0, +1 with probabilities 1/4, 1/2, 1/4."""
    rng = np.random.default_rng(3)
    one = rng.normal(size=(1, 500))
    np.testing.assert_allclose(bootstrap.resampled_means(one, rng), one[0])
    two = np.concatenate([np.full((1, 4000), -1.0), np.full((1, 4000), 1.0)])
    means = bootstrap.resampled_means(two, rng)
    shares = [np.mean(np.isclose(means, v)) for v in (-1.0, 0.0, 1.0)]
    np.testing.assert_allclose(shares, [0.25, 0.5, 0.25], atol=0.03)
    difference = bootstrap.resampled_difference(one + 2.0, one, rng)
    np.testing.assert_allclose(difference, 2.0)
    with pytest.raises(ValueError, match="as many resamples"):
        bootstrap.resampled_difference(one, two, rng)


@pytest.mark.parametrize(
    "interval, direction, margin, expected",
    [
        ((0.1, 0.3), 1, None, "reproduced"),
        ((-0.3, -0.1), -1, None, "reproduced"),
        ((-0.3, -0.1), 1, None, "not reproduced"),
        ((-0.1, 0.2), 1, None, "inconclusive"),
        ((-0.01, 0.05), 1, 0.02, "reproduced"),  # at least as good, within the margin
        ((-0.08, -0.03), 1, 0.02, "not reproduced"),
        ((-0.04, 0.01), 1, 0.02, "inconclusive"),
        ((0.01, 0.04), -1, 0.02, "inconclusive"),
    ],
)
def test_verdict_with_and_without_a_margin(interval, direction, margin, expected):
    assert bootstrap.verdict(interval, direction, margin) == expected
