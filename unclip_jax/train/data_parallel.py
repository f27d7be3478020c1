"""Gradients of a data-parallel step on CPU devices, each device's own, summed in flat buckets.

Under the partitioner every parameter's gradient is reduced over the devices by its own
all-reduce, and XLA:CPU's collectives meet at a rendezvous for every buffer they reduce (188 in
the `tiny` decoder's step, 408 in `small`'s): on two CPU devices the `tiny` step spent a fifth of
its time reducing 3.5 MB of gradients and another fifth waiting at those meetings. Here the step's
gradients are computed per device (`jax.shard_map` over the batch axes) and summed in buckets of
`BUCKET_BYTES` concatenated gradients, one all-reduce each (as PyTorch's DDP buckets them).

Used when every device is a CPU and the parameters are replicated on every device (pure data
parallelism, `uses_buckets`); elsewhere the partitioner's reductions are kept, which TPU and GPU
compilers combine and overlap themselves. Each device draws its rows' noise from its own key
(the step's key folded with the device's index along the batch axes), so such a run's draws
depend on the number of devices; its gradients equal the partitioned step's for a loss that
draws nothing.
"""

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from unclip_jax import sharding

BUCKET_BYTES = 4 * 2**20  # `tiny`'s and `small`'s steps ran as fast with buckets of 64 KiB to 4 MiB


def _batch_axes(mesh: Mesh) -> tuple[tuple[str, ...], int]:
    """The mesh axes the batch is split over, and how many shards they make."""
    axes = tuple(a for a in sharding.BATCH_MESH_AXES if a in mesh.shape)
    return axes, math.prod(mesh.shape[a] for a in axes)


def uses_buckets(mesh: Mesh, param_shardings: object) -> bool:
    """Whether a step on `mesh` sums its gradients in buckets: the batch split over more than
    one device, all CPUs, every parameter replicated on all of them."""
    return (
        _batch_axes(mesh)[1] > 1
        and all(d.platform == "cpu" for d in mesh.devices.flat)
        and all(
            isinstance(s, NamedSharding) and s.is_fully_replicated
            for s in jax.tree.leaves(param_shardings)
        )
    )


def sum_in_buckets(tree: object, axis_name: str | tuple[str, ...], bucket_bytes: int) -> object:
    """`jax.lax.psum(tree, axis_name)` as one all-reduce per bucket: a leaf of `bucket_bytes` or
    more alone, smaller leaves of one dtype concatenated in the tree's order until a bucket
    holds `bucket_bytes` (the last of each dtype may hold less)."""
    leaves, treedef = jax.tree.flatten(tree)
    summed: list[jax.Array | None] = [None] * len(leaves)
    open_buckets: dict[jnp.dtype, tuple[list[int], int]] = {}

    def reduce(indices: list[int]) -> None:
        flat = jnp.concatenate([jnp.ravel(leaves[i]) for i in indices])
        flat = jax.lax.psum(flat, axis_name)
        offset = 0
        for i in indices:
            size = leaves[i].size
            summed[i] = flat[offset : offset + size].reshape(leaves[i].shape)
            offset += size

    for i, leaf in enumerate(leaves):
        dtype = jnp.result_type(leaf)
        leaf_bytes = leaf.size * dtype.itemsize
        if leaf_bytes >= bucket_bytes:  # its own bucket: nothing to copy
            reduce([i])
            continue
        indices, nbytes = open_buckets.get(dtype, ([], 0))
        indices.append(i)
        nbytes += leaf_bytes
        if nbytes >= bucket_bytes:
            reduce(indices)
            indices, nbytes = [], 0
        open_buckets[dtype] = (indices, nbytes)
    for indices, _ in open_buckets.values():
        if indices:
            reduce(indices)
    return jax.tree.unflatten(treedef, summed)


def per_device_mean(
    fn: Callable[[object, object, jax.Array], object], mesh: Mesh
) -> Callable[[object, object, jax.Array], object]:
    """`fn(params, batch, key)` run on each device's rows of `batch` [B, ...] (split over the
    batch axes) with its own key, its outputs (losses, metrics, gradients: means over the rows)
    averaged over the devices in buckets. params and key replicated; outputs replicated."""
    axes, devices = _batch_axes(mesh)

    def local(params: object, batch: object, key: jax.Array) -> object:
        index = jax.lax.axis_index(axes)
        out = fn(params, batch, jax.random.fold_in(key, index))
        out = sum_in_buckets(out, axes, BUCKET_BYTES)
        return jax.tree.map(lambda x: x / devices, out)

    # check_vma=False: the parameters enter replicated, and with the check on, each parameter's
    # gradient would be summed over the devices by its own all-reduce, as under the partitioner.
    return jax.shard_map(
        local, mesh=mesh, in_specs=(P(), P(axes), P()), out_specs=P(), check_vma=False
    )
