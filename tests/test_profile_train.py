"""`experiments.profile_train.compiled_roles` names the roles of a compiled training step's
operations: each convolution's three products and attention's, read from the HLO."""

import jax
import jax.numpy as jnp

from experiments.profile_train import compiled_roles
from unclip_jax.nn.attention import MultiHeadAttention


def test_a_compiled_gradient_has_every_role():
    x = jnp.ones((2, 8, 8, 16))
    attention = MultiHeadAttention(num_heads=2, name="attention")
    params = {
        "kernel": jnp.ones((3, 3, 16, 16)) * 0.01,
        "attention": attention.init(jax.random.key(0), x.reshape(2, 64, 16))["params"],
    }

    def loss(params, x):
        h = jax.lax.conv_general_dilated(
            x, params["kernel"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        h = attention.apply({"params": params["attention"]}, h.reshape(2, 64, 16))
        return jnp.sum(h**2)

    hlo = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(params, x).compile().as_text()
    roles = set(compiled_roles(hlo).values())
    assert {
        "convolution: forward",
        "convolution: input gradient",
        "convolution: kernel gradient",
        "attention: projections",
        "attention: products",
        "attention: softmax, masks, layout",
    } <= roles, roles
