"""Dense and convolution layers: the parameters and numbers of Flax's own layers, with logical
axis names on every parameter."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unclip_jax.nn.linear import conv, dense
from unclip_jax.sharding import CONV_IN, CONV_OUT, CONV_SPATIAL, EMBED, HEAD_DIM, HEADS, MLP


class Pair(nn.Module):
    """The same projection built twice under one name: by `make(ours)` and by Flax."""

    ours: bool
    make: object

    @nn.compact
    def __call__(self, x):
        return self.make(self.ours)(x)


def _init_and_apply(make, x):
    out = {}
    for ours in (True, False):
        module = Pair(ours, make)
        variables = module.init(jax.random.key(0), x)
        out[ours] = (variables["params"], module.apply(variables, x))
    return out[True], out[False]


def test_dense_equals_flax_dense_parameters_and_outputs():
    x = jax.random.normal(jax.random.key(1), (3, 5, 16))

    def make(ours):
        if ours:
            return dense(24, (EMBED, MLP), name="proj")
        return nn.Dense(24, name="proj")

    (params, y), (flax_params, flax_y) = _init_and_apply(make, x)
    kernel = params["proj"]["kernel"]
    assert kernel.names == (EMBED, MLP) and params["proj"]["bias"].names == (MLP,)
    np.testing.assert_array_equal(kernel.value, flax_params["proj"]["kernel"])
    np.testing.assert_array_equal(params["proj"]["bias"].value, flax_params["proj"]["bias"])
    assert y.shape == (3, 5, 24)
    np.testing.assert_allclose(y, flax_y, atol=1e-6)


def test_dense_over_several_axes_equals_einsum():
    x = jax.random.normal(jax.random.key(1), (2, 7, 16))
    heads = dense((4, 8), (EMBED, HEADS, HEAD_DIM), name="query")
    params = heads.init(jax.random.key(0), x)["params"]
    assert params["kernel"].value.shape == (16, 4, 8)
    assert params["bias"].names == (HEADS, HEAD_DIM)
    params = nn.unbox(params)
    params["bias"] = jnp.arange(32.0).reshape(4, 8)
    y = heads.apply({"params": params}, x)
    expected = jnp.einsum("bld,dhk->blhk", x, params["kernel"]) + params["bias"]
    np.testing.assert_allclose(y, expected, atol=1e-5)

    out = dense(16, (HEADS, HEAD_DIM, EMBED), name="out", use_bias=False)
    out_params = nn.unbox(out.init(jax.random.key(2), y)["params"])
    assert set(out_params) == {"kernel"}
    std = float(jnp.std(out_params["kernel"]))
    assert 0.5 / np.sqrt(32) < std < 1.5 / np.sqrt(32)  # LeCun normal over fan-in H·Dh
    np.testing.assert_allclose(
        out.apply({"params": out_params}, y),
        jnp.einsum("blhk,hkd->bld", y, out_params["kernel"]),
        atol=1e-4,
    )


def test_dense_names_must_leave_input_axes():
    with pytest.raises(ValueError, match=r"kernel names \('embed',\) for features \(8,\)"):
        dense(8, (EMBED,), name="bad").init(jax.random.key(0), jnp.ones((2, 4)))


@pytest.mark.parametrize("zero", [False, True])
def test_conv_names_and_zero_initialisation(zero):
    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 4))
    layer = conv(6, 3, name="conv", zero=zero)
    params = layer.init(jax.random.key(0), x)["params"]
    assert params["kernel"].names == (CONV_SPATIAL, None, CONV_IN, CONV_OUT)
    assert params["bias"].names == (CONV_OUT,)
    kernel = params["kernel"].value
    assert kernel.shape == (3, 3, 4, 6) and bool(jnp.all(kernel == 0)) == zero
    y = layer.apply({"params": nn.unbox(params)}, x)
    assert y.shape == (2, 8, 8, 6)  # same padding
