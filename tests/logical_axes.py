"""Checks of the models' logical axis names: the parameters without a name for each dim, and
the mesh shardings the default rules give the named ones."""

import flax.linen as nn
from flax import traverse_util

from unclip_jax import sharding


def unnamed(boxed) -> list[str]:
    """The paths of the parameters in `boxed` (from `init` under `eval_shape`) that lack a logical
    axis name for each of their dims."""
    flat = traverse_util.flatten_dict(boxed)
    return [
        "/".join(path)
        for path, leaf in flat.items()
        if not isinstance(leaf, nn.Partitioned) or len(leaf.names) != leaf.value.ndim
    ]


def mesh_shardings(boxed):
    """The shardings of `boxed` on a data=2 × fsdp=2 × tensor=2 mesh under the default rules."""
    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    return nn.logical_to_mesh_sharding(nn.get_partition_spec(boxed), mesh, sharding.DEFAULT_RULES)
