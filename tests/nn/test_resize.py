"""The bicubic resize against torch's `F.interpolate(mode="bicubic")`, antialias on and off."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from unclip_jax.nn.resize import bicubic_resize, resize_matrix

SHAPES = [
    ((8, 8), (32, 32)),  # ×4 up, as 64→256
    ((16, 12), (64, 20)),  # non-square, different factors per axis
    ((64, 64), (16, 16)),  # ×4 down
    ((30, 17), (7, 40)),  # down along one axis, up along the other, odd sizes
]


@pytest.mark.parametrize("antialias", [False, True])
@pytest.mark.parametrize(("size_in", "size_out"), SHAPES)
def test_matches_torch(antialias, size_in, size_out):
    images = np.random.default_rng(0).normal(size=(2, 3, *size_in)).astype(np.float32)
    expected = F.interpolate(
        torch.from_numpy(images),
        size=size_out,
        mode="bicubic",
        align_corners=False,
        antialias=antialias,
    ).numpy()
    resize = jax.jit(bicubic_resize, static_argnums=(1, 2))
    out = resize(jnp.asarray(images.transpose(0, 2, 3, 1)), size_out, antialias)
    np.testing.assert_allclose(np.asarray(out).transpose(0, 3, 1, 2), expected, atol=2e-5)


@pytest.mark.parametrize("antialias", [False, True])
def test_rows_sum_to_one_and_identity_at_same_size(antialias):
    for size_in, size_out in [(8, 32), (64, 16), (17, 40)]:
        np.testing.assert_allclose(
            resize_matrix(size_in, size_out, antialias).sum(1), 1.0, atol=1e-6
        )
    np.testing.assert_allclose(resize_matrix(9, 9, antialias), np.eye(9), atol=1e-7)


def test_rejects_bad_input():
    with pytest.raises(ValueError, match="sizes must be positive"):
        resize_matrix(0, 4, True)
    with pytest.raises(ValueError, match=r"\[B, H, W, C\]"):
        bicubic_resize(jnp.zeros((4, 4, 3)), (8, 8))
