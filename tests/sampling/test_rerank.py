"""Best-of-N by CLIP score: the cosine of matching rows, and the kept row of each group of N
consecutive candidates is the argmax of its scores (the first where tied)."""

import numpy as np
import pytest

from unclip_jax.sampling.rerank import best_rows, clip_scores


def test_clip_scores_are_the_cosines_of_matching_rows():
    rng = np.random.default_rng(0)
    image, text = rng.normal(size=(5, 7)), rng.normal(size=(5, 7))
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
    expected = np.sum(unit(image) * unit(text), axis=-1)
    np.testing.assert_allclose(clip_scores(image, text), expected, atol=1e-6)


def test_best_rows_are_each_groups_argmax():
    scores = np.asarray([0.1, 0.7, 0.2, 0.9, 0.9, 0.3, -1.0, -0.5, -2.0])  # 3 groups of 3
    np.testing.assert_array_equal(best_rows(scores, 3), [1, 3, 7])
    np.testing.assert_array_equal(best_rows(scores, 1), np.arange(9))
    with pytest.raises(ValueError, match=r"scores must be \[G·N\] for N = 2 .* got shape \(9,\)"):
        best_rows(scores, 2)
