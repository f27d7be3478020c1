"""The floating-point types a model may compute in: by the names configs and flags give them, as
the two fields every module of the models carries (`PrecisionModule`), and a parameter tree cast
to one (training's forward pass, sampling in bfloat16)."""

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def compute_dtype(name: str, what: str = "dtype") -> jnp.dtype:
    """The dtype of a name of COMPUTE_DTYPES; any other value is one error naming `what`."""
    if not isinstance(name, str) or name not in COMPUTE_DTYPES:
        raise ValueError(f"{what} must be one of {sorted(COMPUTE_DTYPES)}, got {name!r}")
    return jnp.dtype(COMPUTE_DTYPES[name])


class PrecisionModule(nn.Module):
    """A module computing in `dtype` with parameters stored in `param_dtype` (MaxText's split).

    Both fields are keyword-only, so that a subclass's own fields keep their positions;
    `self.dtypes` passes them on to the layers it builds: `dense(..., **self.dtypes)`.
    """

    dtype: jnp.dtype = dataclasses.field(default=jnp.float32, kw_only=True)
    param_dtype: jnp.dtype = dataclasses.field(default=jnp.float32, kw_only=True)

    @property
    def dtypes(self) -> dict[str, jnp.dtype]:
        return dict(dtype=self.dtype, param_dtype=self.param_dtype)


def parse_dtypes(fields: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a module's plain fields (a config section, a stage.json) with `dtype` and
    `param_dtype`, where given by name, as dtypes."""
    names = ("dtype", "param_dtype")
    return {key: jnp.dtype(value) if key in names else value for key, value in fields.items()}


def cast_floats(tree: Any, dtype: jnp.dtype) -> Any:
    """Every floating leaf of `tree` as `dtype` (host arrays stay on the host), others as they
    are."""
    return jax.tree.map(
        lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree
    )
