"""Device mesh, logical axis names and the rules that map them to mesh axes.

Every parameter and large activation carries logical axis names (the constants below); a config's
ordered rule list maps each name to a mesh axis (or None = replicated). Mesh axes: `data`
(pure data parallelism), `fsdp` (data parallelism with parameters sharded), `tensor` (model
parallelism inside a layer).
"""

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

# Mesh axes.
DATA = "data"
FSDP = "fsdp"
TENSOR = "tensor"
MESH_AXES = (DATA, FSDP, TENSOR)
BATCH_MESH_AXES = (DATA, FSDP)

# Logical axis names of parameters and activations.
BATCH = "batch"
LENGTH = "length"  # sequence positions
EMBED = "embed"  # model width
MLP = "mlp"  # hidden width of feed-forward layers
HEADS = "heads"
HEAD_DIM = "head_dim"
VOCAB = "vocab"
CONV_IN = "conv_in"  # input channels of a convolution kernel
CONV_OUT = "conv_out"  # output channels of a convolution kernel
CONV_SPATIAL = "conv_spatial"  # kernel height / width
NORM = "norm"  # scales and biases of normalisation layers
HEIGHT = "height"
WIDTH = "width"
CHANNELS = "channels"  # activation channels
JOINT_EMBED = "joint_embed"  # the shared image-text embedding space (CLIP projections)
LAYERS = "layers"  # the stacked layers of a scanned block

# Logical names of the activations that models constrain at block boundaries (`constrain`).
TOKENS = (BATCH, LENGTH, EMBED)  # transformer states [B, L, D]
HIDDEN = (BATCH, LENGTH, MLP)  # feed-forward hidden states [B, L, M]
PER_HEAD = (BATCH, LENGTH, HEADS, HEAD_DIM)  # queries, keys, values [B, L, H, Dh]
FEATURE_MAP = (BATCH, HEIGHT, WIDTH, CHANNELS)  # U-Net activations [B, H, W, C]

Rules = Sequence[tuple[str, str | tuple[str, ...] | None]]

# Default: batch over data×fsdp, weights' model width over fsdp (ZeRO-3 style), feed-forward,
# heads and feature-map channels over tensor. Configs carry their own copy in
# `config.sharding.rules`.
DEFAULT_RULES: Rules = (
    (BATCH, BATCH_MESH_AXES),
    (LENGTH, None),
    (EMBED, FSDP),
    (MLP, TENSOR),
    (HEADS, TENSOR),
    (HEAD_DIM, None),
    (VOCAB, TENSOR),
    (CONV_IN, None),
    (CONV_OUT, FSDP),
    (CONV_SPATIAL, None),
    (NORM, None),
    (HEIGHT, None),
    (WIDTH, None),
    (CHANNELS, TENSOR),
    (JOINT_EMBED, None),
    (LAYERS, None),
)


def make_mesh(shape: Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A mesh over `devices` (default: all) with axes `data`, `fsdp`, `tensor`.

    `shape` maps axis names to sizes; missing axes have size 1 and one size may be -1 to take the
    remaining devices, e.g. `{"data": -1, "fsdp": 2}` on 8 devices is data=4 × fsdp=2.
    """
    devices = list(jax.devices() if devices is None else devices)
    unknown = sorted(set(shape) - set(MESH_AXES))
    if unknown:
        raise ValueError(f"mesh axes must be among {MESH_AXES}, got {unknown}")
    sizes = [int(shape.get(axis, 1)) for axis in MESH_AXES]
    if sizes.count(-1) > 1 or any(s == 0 or s < -1 for s in sizes):
        raise ValueError(f"mesh sizes must be positive with at most one -1, got {dict(shape)}")
    known = int(np.prod([s for s in sizes if s != -1]))
    if -1 in sizes:
        if len(devices) % known:
            raise ValueError(
                f"mesh {dict(shape)} cannot fill {len(devices)} devices: "
                f"{len(devices)} is not a multiple of {known}"
            )
        sizes[sizes.index(-1)] = len(devices) // known
    if int(np.prod(sizes)) != len(devices):
        raise ValueError(
            f"mesh {dict(zip(MESH_AXES, sizes, strict=True))} needs {int(np.prod(sizes))} devices, "
            f"got {len(devices)}"
        )
    device_grid = np.asarray(devices, dtype=object).reshape(sizes)
    return Mesh(device_grid, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension split over `data` × `fsdp`, everything else replicated."""
    return NamedSharding(mesh, P(BATCH_MESH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def normalize_rules(rules: Rules) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """Config rules (lists from ml_collections) as tuples; mesh axes always as a tuple.

    Raises ValueError naming a rule whose mesh axis is not one of `MESH_AXES`.
    """
    normalized = []
    for rule in rules:
        if len(rule) != 2 or not isinstance(rule[0], str):
            raise ValueError(f"a sharding rule is (logical name, mesh axes), got {rule!r}")
        name, axes = rule
        axes = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
        unknown = [axis for axis in axes if axis not in MESH_AXES]
        if unknown:
            raise ValueError(f"rule for {name!r} names mesh axes {unknown}; expected {MESH_AXES}")
        normalized.append((name, axes))
    return tuple(normalized)


def logical_to_spec(
    logical_axes: Sequence[str | None],
    shape: Sequence[int],
    mesh: Mesh | jax.sharding.AbstractMesh,
    rules: Rules,
) -> P:
    """The PartitionSpec of an array of `shape` whose dims carry `logical_axes`.

    The first rule naming a logical axis wins; a mesh axis is used at most once per array; mesh
    axes of size 1, and those whose size does not divide the dimension, are dropped (the dimension
    is then replicated over them) so that any small model runs on any mesh; so are mesh axes the
    mesh lacks (a pipeline's one-axis `data` mesh).
    """
    if len(logical_axes) != len(shape):
        raise ValueError(f"logical axes {tuple(logical_axes)} do not match shape {tuple(shape)}")
    table: dict[str, tuple[str, ...]] = {}
    for name, axes in normalize_rules(rules):
        table.setdefault(name, axes)
    used: set[str] = set()
    spec: list[str | tuple[str, ...] | None] = []
    for name, size in zip(logical_axes, shape, strict=True):
        chosen: list[str] = []
        for axis in table.get(name, ()) if name is not None else ():
            if axis in used or mesh.shape.get(axis, 1) == 1:
                continue
            if size % (int(np.prod([mesh.shape[a] for a in chosen])) * mesh.shape[axis]):
                continue
            chosen.append(axis)
        used.update(chosen)
        spec.append(None if not chosen else chosen[0] if len(chosen) == 1 else tuple(chosen))
    return P(*spec)


def _is_boxed(x: object) -> bool:
    return isinstance(x, nn.Partitioned)


def logical_axes_of(boxed_tree: object) -> object:
    """The tree of logical axis names (tuples; None for leaves without names) of boxed params."""
    return jax.tree.map(
        lambda x: tuple(x.names) if _is_boxed(x) else None, boxed_tree, is_leaf=_is_boxed
    )


def shardings_of(boxed_tree: object, mesh: Mesh, rules: Rules) -> object:
    """NamedShardings for the unboxed version of `boxed_tree` (arrays or ShapeDtypeStructs)."""

    def one(x: object) -> NamedSharding:
        if _is_boxed(x):
            return NamedSharding(mesh, logical_to_spec(x.names, x.value.shape, mesh, rules))
        return replicated(mesh)

    return jax.tree.map(one, boxed_tree, is_leaf=_is_boxed)


def create_sharded(
    init_fn: Callable[..., object], mesh: Mesh, rules: Rules, *args: object
) -> tuple[object, object]:
    """Runs `init_fn(*args)` (returning boxed params) with every output created already sharded.

    eval_shape → partition specs from the logical names → `jit(init, out_shardings=...)`, so no
    parameter is ever materialised whole on one device. Returns (unboxed params, shardings).
    """
    abstract = jax.eval_shape(init_fn, *args)
    shardings = shardings_of(abstract, mesh, rules)
    params = jax.jit(lambda *a: nn.unbox(init_fn(*a)), out_shardings=shardings)(*args)
    return params, shardings


def constrain(x: jax.Array, logical_axes: Sequence[str | None]) -> jax.Array:
    """Sharding constraint on an activation by logical names (`x: [B, L, D]` with `TOKENS`);
    a no-op outside `activation_rules` (plain `model.apply`, samplers, pipelines) and in a
    per-device region (`jax.shard_map` over every mesh axis)."""
    mesh = jax.sharding.get_abstract_mesh()
    rules = nn.get_logical_axis_rules()
    if mesh.empty or not rules or mesh.are_all_axes_manual:
        return x
    return jax.lax.with_sharding_constraint(x, logical_to_spec(logical_axes, x.shape, mesh, rules))


def spread_rows(tree: object) -> object:
    """Arrays of `tree` with their leading (row) axis split over the batch axes (`data`, `fsdp`)
    of the ambient mesh (`jax.set_mesh`) that divide it; unchanged without one. A guided step's
    doubled batch (conditional and unconditional rows) goes through this, so that fewer images
    than devices still fill them: one image's two rows run on two devices."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return tree
    batch_rule = ((BATCH, BATCH_MESH_AXES),)

    def one(x: jax.Array) -> jax.Array:
        logical = (BATCH,) + (None,) * (x.ndim - 1)
        return jax.lax.with_sharding_constraint(
            x, logical_to_spec(logical, x.shape, mesh, batch_rule)
        )

    return jax.tree.map(one, tree)


@contextlib.contextmanager
def activation_rules(mesh: Mesh, rules: Rules) -> Iterator[None]:
    """Mesh and rules under which `constrain` takes effect (train and eval steps trace in it)."""
    flax_rules = tuple((name, axes or None) for name, axes in normalize_rules(rules))
    with jax.set_mesh(mesh), nn.logical_axis_rules(flax_rules):
        yield


# Per-block rematerialisation: which intermediates of a block are kept for the backward pass.
# "none" keeps everything (no remat); "full" recomputes the whole block; "dots" keeps matmul
# outputs; "dots_no_batch" keeps only matmuls without batch dimensions (weights-like products).
REMAT_POLICIES: dict[str, Callable[..., bool] | None] = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_saveable,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def remat(module_cls: type[nn.Module], policy: str, **kwargs: object) -> type[nn.Module]:
    """`module_cls` wrapped with `nn.remat` under the named policy ("none" returns it unchanged).

    Models call this on their repeated block class, e.g. `remat(ResBlock, self.remat_policy)`.
    """
    if policy not in REMAT_POLICIES:
        raise ValueError(f"remat policy must be one of {sorted(REMAT_POLICIES)}, got {policy!r}")
    if policy == "none":
        return module_cls
    return nn.remat(module_cls, policy=REMAT_POLICIES[policy], **kwargs)
