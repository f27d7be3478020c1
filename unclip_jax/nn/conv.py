"""Same-padded, stride-1 2-D convolutions, through oneDNN on CPUs where its kernels are built.

`conv_same(x, kernel)` is `lax.conv_general_dilated(x, kernel, (1, 1), "SAME")` in NHWC / HWIO.
Where a program is lowered for a CPU, the inputs are float32, the kernel is odd-sized and the
native library is built (`python -m unclip_jax.nn.native.build`; `make venv` runs it), the
convolution and both halves of its VJP are oneDNN's, as XLA FFI calls: no layout transposes
around the gradients, and products 1.2× as fast as XLA:CPU's on one thread (the `small` decoder's
training step 1.22×; BENCHMARKS.md, "oneDNN convolutions"). Each call is partitioned over the
batch dimension (a device convolves its own rows; kernel gradients are summed over the devices)
and vmaps by joining the vmapped axis to the rows. Programs lowered for TPUs and GPUs, bfloat16
inputs, and CPUs without the library (or with `UNCLIP_ONEDNN=0`) use XLA's convolution.
"""

import ctypes
import functools
import os
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.custom_partitioning import custom_partitioning
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

Array = jax.Array

LIBRARY = Path(__file__).parent / "native" / "_onednn_conv.so"
_TARGETS = {
    "unclip_conv_forward": "UnclipConvForward",
    "unclip_conv_backward_input": "UnclipConvBackwardInput",
    "unclip_conv_backward_kernel": "UnclipConvBackwardKernel",
}


def xla_conv_same(x: Array, kernel: Array) -> Array:  # [N, H, W, Ci], [K, K, Ci, Co]
    """XLA's same-padded convolution, [N, H, W, Co]."""
    return jax.lax.conv_general_dilated(
        x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


@functools.cache
def onednn_available() -> bool:
    """Whether the native library is built and its FFI targets registered for the CPU."""
    if os.environ.get("UNCLIP_ONEDNN", "1") == "0" or not LIBRARY.exists():
        return False
    library = ctypes.cdll.LoadLibrary(str(LIBRARY))
    for target, symbol in _TARGETS.items():
        jax.ffi.register_ffi_target(
            target, jax.ffi.pycapsule(getattr(library, symbol)), platform="cpu"
        )
    return True


@functools.cache
def _threads_per_device() -> int:
    """Cores a JAX CPU device may use: the process's cores over its CPU devices."""
    return max(1, len(os.sched_getaffinity(0)) // len(jax.local_devices(backend="cpu")))


def _call(target: str, out_shape: tuple[int, ...], *args: Array) -> Array:
    out = jax.ShapeDtypeStruct(out_shape, jnp.float32)
    varying = max(map(jax.typeof, args), key=lambda aval: len(aval.mat.varying))
    if varying.mat.varying:  # inside shard_map: varying over the axes its operands vary over
        mesh = varying.sharding.mesh
        out = jax.ShapeDtypeStruct(
            out_shape, jnp.float32, sharding=NamedSharding(mesh, P()), manual_axis_type=varying.mat
        )
    return jax.ffi.ffi_call(target, out)(*args, threads=np.int64(_threads_per_device()))


def _forward_call(x: Array, kernel: Array) -> Array:  # [N, H, W, Ci], [K, K, Ci, Co]
    return _call("unclip_conv_forward", (*x.shape[:3], kernel.shape[3]), x, kernel)


def _input_grad_call(dy: Array, kernel: Array) -> Array:  # [N, H, W, Co], [K, K, Ci, Co]
    return _call("unclip_conv_backward_input", (*dy.shape[:3], kernel.shape[2]), dy, kernel)


def _kernel_grad_call(kernel_size: tuple[int, int], x: Array, dy: Array) -> Array:
    return _call("unclip_conv_backward_kernel", (*kernel_size, x.shape[3], dy.shape[3]), x, dy)


def _batch_axes(sharding: jax.sharding.Sharding | None) -> object:
    """The mesh axes of a NHWC array's batch dimension (its spec's first entry), or None."""
    spec = getattr(sharding, "spec", ())
    return spec[0] if len(spec) else None


def _over_batch(call: Callable[..., Array], rule: str, sums_batch: bool, static: int = 0):
    """`call` partitioned over the batch dimension of its first operand: each device runs it on
    its rows (every other dimension replicated), and a kernel gradient is summed over them."""
    partitioned = custom_partitioning(call, static_argnums=tuple(range(static)))

    def partition(*args):
        static_args, (mesh, arg_shapes, _) = args[:static], args[static:]
        batch = _batch_axes(arg_shapes[0].sharding)
        arg_specs = [P(batch, None, None, None), P() if not sums_batch else P(batch)]
        arg_shardings = tuple(NamedSharding(mesh, spec) for spec in arg_specs)
        result_sharding = NamedSharding(mesh, P() if sums_batch else P(batch))

        def lower(*operands):
            out = call(*static_args, *operands)
            return jax.lax.psum(out, batch) if sums_batch and batch is not None else out

        return mesh, lower, result_sharding, arg_shardings

    def infer(*args):
        mesh, arg_shapes = args[static], args[static + 1]
        batch = _batch_axes(arg_shapes[0].sharding)
        return NamedSharding(mesh, P() if sums_batch else P(batch))

    factors = dict.fromkeys(rule.replace(",", " ").replace("->", " ").split())  # in order
    partitioned.def_partition(
        partition,
        infer_sharding_from_operands=infer,
        sharding_rule=rule,
        need_replication_factors=tuple(f for f in factors if f != "n"),
    )
    return partitioned


def _batchable(call: Callable[[Array, Array], Array], rowwise: bool):
    """`call(a, b)` under `jax.vmap`: a vmapped axis of `a` alone joins its rows where `call` is
    row by row (`rowwise`); otherwise one call per vmapped element (`lax.map`)."""
    batchable = jax.custom_batching.custom_vmap(call)

    @batchable.def_vmap
    def rule(axis_size: int, in_batched: list[bool], a: Array, b: Array):
        if rowwise and in_batched == [True, False]:
            out = batchable(a.reshape(-1, *a.shape[2:]), b)
            return out.reshape(axis_size, -1, *out.shape[1:]), True
        a, b = (x if batched else jnp.broadcast_to(x, (axis_size, *x.shape))
                for x, batched in zip((a, b), in_batched, strict=True))  # fmt: skip
        return jax.lax.map(lambda ab: batchable(*ab), (a, b)), True

    return batchable


_forward = _batchable(
    _over_batch(_forward_call, "n h w i, a b i o -> n h w o", sums_batch=False), rowwise=True
)
_input_grad = _batchable(
    _over_batch(_input_grad_call, "n h w o, a b i o -> n h w i", sums_batch=False), rowwise=True
)
_partitioned_kernel_grad = _over_batch(
    _kernel_grad_call, "n h w i, n h w o -> a b i o", sums_batch=True, static=1
)


def _kernel_grad(kernel_size: tuple[int, int], x: Array, dy: Array) -> Array:
    call = functools.partial(_partitioned_kernel_grad, kernel_size)
    return _batchable(call, rowwise=False)(x, dy)


@jax.custom_vjp
def onednn_conv_same(x: Array, kernel: Array) -> Array:  # float32 [N, H, W, Ci], [K, K, Ci, Co]
    """oneDNN's same-padded convolution (CPU only), [N, H, W, Co]."""
    return _forward(x, kernel)


def _conv_forward(x: Array, kernel: Array) -> tuple[Array, tuple[Array, Array]]:
    return _forward(x, kernel), (x, kernel)


def _conv_backward(residuals: tuple[Array, Array], dy: Array) -> tuple[Array, Array]:
    x, kernel = residuals
    return _input_grad(dy, kernel), _kernel_grad(kernel.shape[:2], x, dy)


onednn_conv_same.defvjp(_conv_forward, _conv_backward)


def conv_same(x: Array, kernel: Array) -> Array:  # [N, H, W, Ci], [K, K, Ci, Co] -> [N, H, W, Co]
    """A same-padded, stride-1 convolution: oneDNN's on CPUs where it applies, else XLA's."""
    native = (
        x.dtype == jnp.float32
        and kernel.dtype == jnp.float32
        and kernel.shape[0] % 2 == 1
        and kernel.shape[1] % 2 == 1
        and onednn_available()
    )
    if not native:
        return xla_conv_same(x, kernel)
    return jax.lax.platform_dependent(x, kernel, cpu=onednn_conv_same, default=xla_conv_same)
