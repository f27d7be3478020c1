"""Dense projections and convolutions whose parameters carry logical axis names.

Every model builds its linear layers here, so that a kernel's names, shape and initialisation
(LeCun normal over the contracted fan-in, zero bias) are written once.
"""

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from unclip_jax.nn.conv import conv_same
from unclip_jax.nn.precision import PrecisionModule
from unclip_jax.sharding import CONV_IN, CONV_OUT, CONV_SPATIAL

Array = jax.Array
AxisNames = tuple[str | None, ...]


class Dense(PrecisionModule):
    """y = x · kernel + bias, contracting the last `len(names) - len(features)` axes of x.

    `names` are the logical names of the kernel's axes, inputs first: (EMBED, MLP) for a [D, M]
    kernel, (EMBED, HEADS, HEAD_DIM) for [D, H, Dh], (HEADS, HEAD_DIM, EMBED) for [H, Dh, D]; the
    bias [*features] takes the output names. The kernel is created at its full rank so that its
    names fit it under a mesh (`nn.DenseGeneral` initialises a flattened 2-D kernel).
    """

    features: tuple[int, ...]
    names: AxisNames
    use_bias: bool = True

    @nn.compact
    def __call__(self, x: Array) -> Array:  # [..., *in] -> [..., *features]
        n_out = len(self.features)
        n_in = len(self.names) - n_out
        if n_in < 1 or n_in > x.ndim:
            raise ValueError(
                f"kernel names {self.names} for features {self.features} leave {n_in} input "
                f"axes; expected 1 to {x.ndim} (the rank of x {tuple(x.shape)})"
            )
        init = nn.initializers.lecun_normal(
            in_axis=tuple(range(n_in)), out_axis=tuple(range(n_in, n_in + n_out))
        )
        kernel = self.param(
            "kernel",
            nn.with_logical_partitioning(init, self.names),
            (*x.shape[x.ndim - n_in :], *self.features),
            self.param_dtype,
        )
        y = jax.lax.dot_general(
            x.astype(self.dtype),
            jnp.asarray(kernel, self.dtype),
            ((tuple(range(x.ndim - n_in, x.ndim)), tuple(range(n_in))), ((), ())),
        )
        if self.use_bias:
            bias = self.param(
                "bias",
                nn.with_logical_partitioning(nn.initializers.zeros_init(), self.names[n_in:]),
                self.features,
                self.param_dtype,
            )
            y = y + jnp.asarray(bias, self.dtype)
        return y


def dense(
    features: int | Sequence[int],
    names: AxisNames,
    *,
    name: str,
    use_bias: bool = True,
    dtype: jnp.dtype = jnp.float32,
    param_dtype: jnp.dtype = jnp.float32,
) -> Dense:
    """A `Dense` layer with kernel names `names` (inputs first), e.g.
    `dense(4 * d, (EMBED, MLP), name="fc1")` or `dense((h, dh), (EMBED, HEADS, HEAD_DIM), ...)`."""
    features = (features,) if isinstance(features, int) else tuple(features)
    return Dense(features, tuple(names), use_bias, dtype=dtype, param_dtype=param_dtype, name=name)


class Conv(PrecisionModule):
    """A same-padded, stride-1 2-D convolution of NHWC maps: kernel [K, K, C_in, C_out] (odd K),
    bias [C_out]; `nn.conv.conv_same` (oneDNN's on CPUs, XLA's elsewhere)."""

    features: int
    kernel_size: int
    zero: bool = False  # zero-initialised kernel (residual branches' last convolution)

    @nn.compact
    def __call__(self, x: Array) -> Array:  # [N, H, W, C_in] -> [N, H, W, C_out]
        init = nn.initializers.zeros_init() if self.zero else nn.initializers.lecun_normal()
        k = self.kernel_size
        # Flax forbids a logical name twice in one array; the width axis, like the height, is
        # never sharded.
        kernel = self.param(
            "kernel",
            nn.with_logical_partitioning(init, (CONV_SPATIAL, None, CONV_IN, CONV_OUT)),
            (k, k, x.shape[-1], self.features),
            self.param_dtype,
        )
        bias = self.param(
            "bias",
            nn.with_logical_partitioning(nn.initializers.zeros_init(), (CONV_OUT,)),
            (self.features,),
            self.param_dtype,
        )
        y = conv_same(x.astype(self.dtype), jnp.asarray(kernel, self.dtype))
        return y + jnp.asarray(bias, self.dtype)


def conv(
    features: int,
    kernel: int,
    *,
    name: str,
    zero: bool = False,  # zero-initialised kernel (residual branches' last convolution)
    dtype: jnp.dtype = jnp.float32,
    param_dtype: jnp.dtype = jnp.float32,
) -> Conv:
    """A same-padded 2-D convolution; kernel [k, k, C_in, C_out], bias [C_out]."""
    if kernel % 2 != 1:
        raise ValueError(f"convolution {name!r}: kernel size {kernel}; expected an odd size")
    return Conv(features, kernel, zero, dtype=dtype, param_dtype=param_dtype, name=name)
