"""Layer and group normalisation whose scales and biases carry the logical name `NORM`."""

import flax.linen as nn
import jax.numpy as jnp

from unclip_jax.sharding import NORM


def _affine(name: str, dtype: jnp.dtype, param_dtype: jnp.dtype) -> dict:
    """The keyword arguments both layers share: named scale (ones) and bias (zeros) [C]."""
    return dict(
        scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), (NORM,)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), (NORM,)),
        dtype=dtype,
        param_dtype=param_dtype,
        name=name,
    )


def layer_norm(
    eps: float = 1e-5,  # PyTorch's default
    *,
    name: str,
    fast_variance: bool = True,  # E[x²] − E[x]²; False: the two-pass variance of PyTorch
    dtype: jnp.dtype = jnp.float32,
    param_dtype: jnp.dtype = jnp.float32,
) -> nn.LayerNorm:
    """LayerNorm over the last axis; scale and bias [D]."""
    return nn.LayerNorm(
        epsilon=eps, use_fast_variance=fast_variance, **_affine(name, dtype, param_dtype)
    )


def group_norm(
    groups: int,
    eps: float = 1e-5,
    *,
    name: str,
    dtype: jnp.dtype = jnp.float32,
    param_dtype: jnp.dtype = jnp.float32,
) -> nn.GroupNorm:
    """GroupNorm over [..., C] with the two-pass variance (as PyTorch); scale and bias [C]."""
    return nn.GroupNorm(
        num_groups=groups, epsilon=eps, use_fast_variance=False, **_affine(name, dtype, param_dtype)
    )
