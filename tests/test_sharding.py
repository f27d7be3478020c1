"""Mesh construction, logical names → PartitionSpecs, parameters created sharded, activation
constraints and the per-block remat policies."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from unclip_jax import sharding
from unclip_jax.sharding import BATCH, EMBED, HEADS, LENGTH, MLP, NORM


@pytest.fixture(scope="module")
def mesh():
    return sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})


def test_make_mesh_fills_one_axis_and_rejects_bad_shapes():
    assert dict(sharding.make_mesh({"data": -1, "fsdp": 2}).shape) == {
        "data": 4,
        "fsdp": 2,
        "tensor": 1,
    }
    with pytest.raises(ValueError, match="cannot fill 8 devices"):
        sharding.make_mesh({"data": -1, "fsdp": 3})
    with pytest.raises(ValueError, match=r"mesh axes must be among .*\['model'\]"):
        sharding.make_mesh({"model": 8})


def test_logical_to_spec_rules(mesh):
    rules = sharding.DEFAULT_RULES
    assert sharding.logical_to_spec((EMBED, MLP), (64, 256), mesh, rules) == P("fsdp", "tensor")
    assert sharding.logical_to_spec((BATCH, LENGTH, EMBED), (8, 5, 64), mesh, rules) == P(
        ("data", "fsdp"), None, None
    )
    # 3 is not divisible by fsdp=2: that dimension is replicated instead.
    assert sharding.logical_to_spec((EMBED, MLP), (3, 256), mesh, rules) == P(None, "tensor")
    # A mesh axis is used once per array: the first dimension that asks gets it.
    assert sharding.logical_to_spec((MLP, HEADS), (4, 4), mesh, rules) == P("tensor", None)
    # The first rule naming a logical axis wins; size-1 mesh axes are dropped.
    first = [(EMBED, "tensor"), (EMBED, "fsdp")]
    assert sharding.logical_to_spec((EMBED,), (8,), mesh, first) == P("tensor")
    data_only = sharding.make_mesh({"data": 8})
    assert sharding.logical_to_spec((EMBED, MLP), (64, 256), data_only, rules) == P(None, None)


def test_rules_name_unknown_mesh_axes():
    with pytest.raises(ValueError, match=r"rule for 'embed' names mesh axes \['model'\]"):
        sharding.normalize_rules([["embed", "model"]])


class Block(nn.Module):
    @nn.compact
    def __call__(self, x):
        kernel_init = nn.with_logical_partitioning(nn.initializers.normal(1.0), (EMBED, MLP))
        h = nn.Dense(16, kernel_init=kernel_init, use_bias=False)(x)
        h = sharding.constrain(h, (BATCH, MLP))
        scale = self.param(
            "scale", nn.with_logical_partitioning(nn.initializers.ones, (NORM,)), (16,)
        )
        return jnp.tanh(h * scale).sum(-1)


def test_create_sharded_params_are_sharded_at_creation(mesh):
    x = jnp.ones((8, 8))
    init = lambda key: Block().init(key, x)["params"]
    params, shardings = sharding.create_sharded(
        init, mesh, sharding.DEFAULT_RULES, jax.random.key(0)
    )
    kernel = params["Dense_0"]["kernel"]
    assert kernel.sharding.spec == P("fsdp", "tensor") == shardings["Dense_0"]["kernel"].spec
    assert {s.data.shape for s in kernel.addressable_shards} == {(4, 8)}
    assert params["scale"].sharding.spec == P(None)
    np.testing.assert_array_equal(kernel, nn.unbox(init(jax.random.key(0)))["Dense_0"]["kernel"])


def test_constrain_takes_effect_only_under_activation_rules(mesh):
    x = jnp.ones((8, 16))
    f = jax.jit(lambda x: sharding.constrain(x * 2, (BATCH, MLP)))
    with sharding.activation_rules(mesh, sharding.DEFAULT_RULES):
        y = f(x)
    assert y.sharding.spec == P(("data", "fsdp"), "tensor")
    assert f(x).sharding.is_fully_replicated


@pytest.mark.parametrize("policy", ["full", "dots", "dots_no_batch"])
def test_remat_policies_keep_gradients(policy):
    x = jax.random.normal(jax.random.key(1), (4, 8))
    params = nn.unbox(Block().init(jax.random.key(0), x)["params"])

    def loss(module_cls, p):
        return module_cls().apply({"params": p}, x).sum()

    reference = jax.grad(lambda p: loss(Block, p))(params)
    rematted = jax.grad(lambda p: loss(sharding.remat(Block, policy), p))(params)
    for a, b in zip(jax.tree.leaves(reference), jax.tree.leaves(rematted), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    jaxpr = str(jax.make_jaxpr(jax.grad(lambda p: loss(sharding.remat(Block, policy), p)))(params))
    assert "checkpoint" in jaxpr or "remat" in jaxpr
    assert sharding.remat(Block, "none") is Block
    with pytest.raises(ValueError, match=r"remat policy must be one of .*'everything'"):
        sharding.remat(Block, "everything")
