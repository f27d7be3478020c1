"""Gradients summed in buckets on CPU devices: the sum equals a psum per leaf, one all-reduce
per bucket, the step equals one device's where the loss draws nothing, and each device draws
from its own key."""

import re
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from unclip_jax import sharding
from unclip_jax.train import data_parallel
from unclip_jax.train import step as step_lib

sys.path.insert(0, str(Path(__file__).parent))
import tiny_task
from test_step import close, make, run


def reduced_buffers(hlo: str) -> int:
    """Buffers the compiled program's all-reduces sum (XLA combines several into one
    instruction; XLA:CPU still meets at a rendezvous for each of its operands)."""
    return sum(args.count("%") for args in re.findall(r" all-reduce\(([^)]*)\)", hlo))


def test_sum_in_buckets_equals_a_psum_per_leaf_with_one_all_reduce_per_bucket():
    mesh = sharding.make_mesh({"data": 4}, jax.devices()[:4])
    rng = np.random.default_rng(0)
    tree = {  # bytes: 96, 64, 400, 40, 16 (float32) and 24 (bfloat16), 12 (int32)
        "a": rng.normal(size=(4, 6, 4)),
        "b": rng.normal(size=(4, 16)),
        "c": rng.normal(size=(4, 10, 10)),
        "d": rng.normal(size=(4, 10)),
        "e": rng.normal(size=(4, 2, 2)),
        "half": rng.normal(size=(4, 12)).astype(jnp.bfloat16),
        "count": np.arange(12).reshape(4, 3).astype(np.int32),
    }
    tree = {k: np.asarray(v, np.float32) if v.dtype == np.float64 else v for k, v in tree.items()}
    # float32 buckets of 128 bytes: [a, b] (160), [c] (400, alone), [d, e] (the last, 56);
    # bfloat16 [half]; int32 [count]: 5 all-reduces for 7 leaves
    per_device = lambda f: jax.jit(
        jax.shard_map(f, mesh=mesh, in_specs=P("data"), out_specs=P(), check_vma=False)
    )
    summed = per_device(lambda t: data_parallel.sum_in_buckets(t, "data", 128))
    reference = per_device(lambda t: jax.lax.psum(t, "data"))
    ours, theirs = summed(tree), reference(tree)
    for k in tree:
        assert ours[k].dtype == theirs[k].dtype and ours[k].shape == theirs[k].shape, k
        np.testing.assert_allclose(
            np.asarray(ours[k], np.float32), np.asarray(theirs[k], np.float32), rtol=1e-6
        )
    assert reduced_buffers(summed.lower(tree).compile().as_text()) == 5
    assert reduced_buffers(reference.lower(tree).compile().as_text()) == 7


def test_uses_buckets_only_for_replicated_parameters_on_several_cpu_devices():
    two = sharding.make_mesh({"data": 2}, jax.devices()[:2])
    one = sharding.make_mesh({"data": 1}, jax.devices()[:1])
    replicated = {"kernel": NamedSharding(two, P()), "bias": NamedSharding(two, P())}
    assert data_parallel.uses_buckets(two, replicated)
    assert not data_parallel.uses_buckets(one, {"kernel": NamedSharding(one, P())})
    tensor = sharding.make_mesh({"data": 1, "tensor": 2}, jax.devices()[:2])
    assert not data_parallel.uses_buckets(tensor, {"kernel": NamedSharding(tensor, P())})
    fsdp = sharding.make_mesh({"data": 2, "fsdp": 2}, jax.devices()[:4])
    split = {"kernel": NamedSharding(fsdp, P("fsdp")), "bias": NamedSharding(fsdp, P())}
    assert not data_parallel.uses_buckets(fsdp, split)


def test_bucketed_step_equals_one_device_when_the_loss_draws_nothing():
    """Two CPU devices with replicated parameters sum their 6 gradients, loss and metric in one
    bucket, and take the same steps as one device."""
    one = run(*make({"data": 1}, jax.devices()[:1], noise=0.0), 3)
    state, step, data, mesh = make({"data": 2}, jax.devices()[:2], noise=0.0)
    batch = step_lib.to_global(data.global_batch_at(0), mesh)
    hlo = step.lower(state, batch, jax.random.key(7)).compile().as_text()
    assert reduced_buffers(hlo) == 1
    two = run(state, step, data, mesh, 3)
    close(two[0].params, one[0].params, 1e-5)
    close(two[0].opt_state, one[0].opt_state, 1e-5)
    np.testing.assert_allclose([m["loss"] for m in two[1]], [m["loss"] for m in one[1]], rtol=1e-5)


class DrawTask(tiny_task.TinyTask):
    """The tiny task with a metric that shows the key: one uniform draw from it."""

    def loss(self, params, batch, key, train):
        loss, metrics = super().loss(params, batch, key, train)
        return loss, {**metrics, "draw": jax.random.uniform(key)}


def test_each_device_draws_from_its_own_key():
    state, step, data, mesh = make({"data": 2}, jax.devices()[:2], task=DrawTask(0.01))
    _, metrics = run(state, step, data, mesh, 1)
    step_key = jax.random.fold_in(jax.random.key(7), 0)
    draws = [jax.random.uniform(jax.random.fold_in(step_key, d)) for d in range(2)]
    np.testing.assert_allclose(metrics[0]["draw"], np.mean(draws), rtol=1e-6)
    assert abs(float(draws[0]) - float(draws[1])) > 1e-3
