"""The floating-point types a model may compute in, by the names configs and flags give them, and
a parameter tree cast to one (training's forward pass, sampling in bfloat16)."""

from typing import Any

import jax
import jax.numpy as jnp

COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def compute_dtype(name: str, what: str = "dtype") -> jnp.dtype:
    """The dtype of a name of COMPUTE_DTYPES; any other value is one error naming `what`."""
    if not isinstance(name, str) or name not in COMPUTE_DTYPES:
        raise ValueError(f"{what} must be one of {sorted(COMPUTE_DTYPES)}, got {name!r}")
    return jnp.dtype(COMPUTE_DTYPES[name])


def cast_floats(tree: Any, dtype: jnp.dtype) -> Any:
    """Every floating leaf of `tree` as `dtype` (host arrays stay on the host), others as they
    are."""
    return jax.tree.map(
        lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree
    )
