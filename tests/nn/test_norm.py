"""Layer and group normalisation: the closed forms, with `NORM` on their scales and biases."""

import flax.linen as nn
import jax
import numpy as np

from unclip_jax.nn.norm import group_norm, layer_norm
from unclip_jax.sharding import NORM


def _normalised(x, axes, eps):
    x = np.asarray(x, np.float64)
    mean = x.mean(axis=axes, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
    return (x - mean) / np.sqrt(var + eps)


def test_layer_norm_two_pass_variance_survives_a_large_offset():
    x = 1e3 + jax.random.normal(jax.random.key(0), (4, 32))
    expected = _normalised(x, -1, 1e-5)
    for fast, atol in ((False, 2e-3), (True, None)):
        layer = layer_norm(name="ln", fast_variance=fast)
        params = layer.init(jax.random.key(1), x)["params"]
        assert params["scale"].names == (NORM,) and params["bias"].names == (NORM,)
        y = layer.apply({"params": nn.unbox(params)}, x)
        error = float(np.abs(np.asarray(y) - expected).max())
        if atol is not None:
            assert error < atol
        else:
            assert error > 2e-3  # E[x²] − E[x]² loses the variance to rounding at this offset


def test_group_norm_equals_closed_form():
    x = jax.random.normal(jax.random.key(0), (2, 4, 4, 8))
    layer = group_norm(2, 1e-5, name="gn")
    params = layer.init(jax.random.key(1), x)["params"]
    assert params["scale"].names == (NORM,)
    y = layer.apply({"params": nn.unbox(params)}, x)
    grouped = np.asarray(x).reshape(2, 4, 4, 2, 4)
    expected = _normalised(grouped, (1, 2, 4), 1e-5).reshape(2, 4, 4, 8)
    np.testing.assert_allclose(y, expected, atol=1e-5)
