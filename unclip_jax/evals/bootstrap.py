"""Bootstrap intervals over training seeds, then captions, and the verdict rule of a claim.

A figure of an arm (oracle accuracy, CLIP score, ...) is a table `values` [S, C]: one value per
training seed s and held-out caption c. One bootstrap replicate draws S seeds with replacement and,
for each drawn seed, C captions with replacement, and averages the drawn values: the spread of the
replicates holds both sources of variation (a model trained again, other captions). Two arms are
compared through the replicates of their difference; `paired` arms (same captions in the same
order) share the caption draws, which removes the captions' common difficulty from the difference.

    low, high = interval(bootstrap_means(hits, rng=rng))
    verdict(interval(bootstrap_difference(a, b, rng=rng)), direction=+1)  # paper: a > b

A figure computed from a whole set of images (a Fréchet distance) has no per-caption values: it
comes as [S, R], each seed's figure on R resamples of its images (with replacement), and
`resampled_means` / `resampled_difference` draw the seeds around them.
"""

import numpy as np

REPLICATES = 2000
VERDICTS = ("reproduced", "not reproduced", "inconclusive")


def _table(values: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(values, np.float64)
    if x.ndim == 1:
        x = x[None]
    if x.ndim != 2 or 0 in x.shape:
        raise ValueError(f"{name} must be [seeds, captions] (or [captions]), got {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} must be finite")
    return x


def _draws(rng: np.random.Generator, seeds: int, captions: int, replicates: int):
    """(seed draws [R, S], caption draws [R, S, C])."""
    return (
        rng.integers(seeds, size=(replicates, seeds)),
        rng.integers(captions, size=(replicates, seeds, captions)),
    )


def bootstrap_means(
    values: np.ndarray, replicates: int = REPLICATES, rng: np.random.Generator | None = None
) -> np.ndarray:
    """[R] replicate means of `values` [S, C] (seeds, then captions, drawn with replacement)."""
    x = _table(values, "values")
    seeds, captions = _draws(rng or np.random.default_rng(0), *x.shape, replicates)
    return x[seeds[..., None], captions].mean(axis=(1, 2))


def bootstrap_difference(
    values_a: np.ndarray,
    values_b: np.ndarray,
    replicates: int = REPLICATES,
    rng: np.random.Generator | None = None,
    paired: bool = True,
) -> np.ndarray:
    """[R] replicates of mean(a) − mean(b); `paired` shares the caption draws (a and b must then
    have as many captions)."""
    a, b = _table(values_a, "values_a"), _table(values_b, "values_b")
    rng = rng or np.random.default_rng(0)
    if not paired:
        return bootstrap_means(a, replicates, rng) - bootstrap_means(b, replicates, rng)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"paired arms need the same captions, got {a.shape[1]} and {b.shape[1]}")
    captions = rng.integers(a.shape[1], size=(replicates, a.shape[1]))
    means = []
    for x in (a, b):
        seeds = rng.integers(x.shape[0], size=(replicates, x.shape[0]))
        means.append(x[seeds[..., None], captions[:, None, :]].mean(axis=(1, 2)))
    return means[0] - means[1]


def resampled_means(values: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
    """[R] replicate means of a figure that is not a mean over captions (a Fréchet distance):
    `values` [S, R], row s the figure of seed s on R resamples of its images; replicate r draws S
    seeds with replacement and averages their r-th resample."""
    x = _table(values, "values")
    seeds = (rng or np.random.default_rng(0)).integers(x.shape[0], size=(x.shape[1], x.shape[0]))
    return x[seeds, np.arange(x.shape[1])[:, None]].mean(axis=1)


def resampled_difference(
    values_a: np.ndarray, values_b: np.ndarray, rng: np.random.Generator | None = None
) -> np.ndarray:
    """[R] replicates of mean(a) − mean(b) of `resampled_means`' figures, [S_a, R] and [S_b, R]
    (each arm's seeds drawn on their own)."""
    a, b = _table(values_a, "values_a"), _table(values_b, "values_b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"both need as many resamples, got {a.shape[1]} and {b.shape[1]}")
    rng = rng or np.random.default_rng(0)
    return resampled_means(a, rng) - resampled_means(b, rng)


def interval(replicates: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The percentile interval holding `level` of the replicates."""
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(np.asarray(replicates, np.float64), [tail, 100 - tail])
    return float(low), float(high)


def verdict(
    difference_interval: tuple[float, float], direction: int, margin: float | None = None
) -> str:
    """The rule of a claim "the difference has the paper's sign `direction` (+1 or −1)":
    reproduced when the interval excludes 0 on that side, not reproduced when it excludes 0 on
    the other, inconclusive when it holds 0. With a `margin` m the claim is "at least as good"
    (non-inferiority): reproduced when direction × difference stays above −m over the whole
    interval, not reproduced when it stays below −m, inconclusive otherwise."""
    if direction not in (1, -1):
        raise ValueError(f"direction must be +1 or -1, got {direction!r}")
    low, high = sorted(direction * np.asarray(difference_interval, np.float64))
    if margin is not None:
        if not margin >= 0:
            raise ValueError(f"margin must be >= 0, got {margin!r}")
        return VERDICTS[0] if low > -margin else VERDICTS[1] if high < -margin else VERDICTS[2]
    return VERDICTS[0] if low > 0 else VERDICTS[1] if high < 0 else VERDICTS[2]
