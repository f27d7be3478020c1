"""The train state (step, params, EMA params, optimiser state, non-finite counters), its EMA
update, and its creation already sharded over the mesh."""

from collections.abc import Callable

import flax
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from unclip_jax import sharding


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 []: train steps taken, skipped ones included
    params: object  # float32 master weights
    ema_params: object  # exponential moving average of `params`
    opt_state: optax.OptState
    nonfinite_streak: jax.Array  # int32 []: consecutive skipped (non-finite) steps
    nonfinite_total: jax.Array  # int32 []: skipped steps over the whole run


def ema_decay(step: jax.Array, decay: float, warmup: float) -> jax.Array:
    """Decay used at update number `step`: min(decay, (1 + step) / (warmup + step)).

    Early averages follow the weights closely (decay 1/warmup at step 0) and the decay grows to
    `decay`; warmup = 1 gives the constant decay from the first step.
    """
    step = jnp.asarray(step, jnp.float32)
    return jnp.minimum(decay, (1.0 + step) / (warmup + step))


def update_ema(ema: object, params: object, decay: jax.Array) -> object:
    """ema ← decay · ema + (1 − decay) · params, leaf by leaf."""
    return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p.astype(e.dtype), ema, params)


def state_shardings(
    tx: optax.GradientTransformation, abstract_params: object, param_shardings: object, mesh: Mesh
) -> TrainState:
    """Shardings of every field: EMA and optimiser moments follow their parameters; scalars and
    other optimiser leaves (counts) are replicated."""
    repl = sharding.replicated(mesh)
    abstract_opt = jax.eval_shape(tx.init, abstract_params)
    opt_shardings = optax.tree_map_params(
        tx,
        lambda _, param_sharding: param_sharding,
        abstract_opt,
        param_shardings,
        transform_non_params=lambda _: repl,
    )
    return TrainState(
        step=repl,
        params=param_shardings,
        ema_params=param_shardings,
        opt_state=opt_shardings,
        nonfinite_streak=repl,
        nonfinite_total=repl,
    )


def _initial_state(
    init_fn: Callable[[jax.Array], object], tx: optax.GradientTransformation, key: jax.Array
) -> TrainState:
    params = flax.linen.unbox(init_fn(key))
    zero = jnp.zeros((), jnp.int32)
    return TrainState(
        step=zero,
        params=params,
        ema_params=params,
        opt_state=tx.init(params),
        nonfinite_streak=zero,
        nonfinite_total=zero,
    )


def train_state_shardings(
    init_fn: Callable[[jax.Array], object],
    tx: optax.GradientTransformation,
    key: jax.Array,
    mesh: Mesh,
    rules: sharding.Rules,
) -> TrainState:
    """Shardings of the state `create_train_state` makes (nothing is computed: eval_shape only)."""
    boxed = jax.eval_shape(init_fn, key)
    param_shardings = sharding.shardings_of(boxed, mesh, rules)
    return state_shardings(tx, flax.linen.unbox(boxed), param_shardings, mesh)


def create_train_state(
    init_fn: Callable[[jax.Array], object],
    tx: optax.GradientTransformation,
    key: jax.Array,
    mesh: Mesh,
    rules: sharding.Rules,
) -> tuple[TrainState, TrainState]:
    """A fresh state created already sharded, and its shardings (a TrainState of NamedShardings).

    `init_fn(key)` returns boxed parameters (logical names); see `sharding.create_sharded`.
    """
    shardings = train_state_shardings(init_fn, tx, key, mesh, rules)
    return init_train_state(init_fn, tx, key, shardings), shardings


def init_train_state(
    init_fn: Callable[[jax.Array], object],
    tx: optax.GradientTransformation,
    key: jax.Array,
    shardings: TrainState,
) -> TrainState:
    """A fresh state computed by one `jit(init, out_shardings=shardings)`: every array is born
    on its shards, none is materialised whole on one device."""
    init = lambda key: _initial_state(init_fn, tx, key)
    return jax.jit(init, out_shardings=shardings)(key)


def abstract_train_state(
    init_fn: Callable[[jax.Array], object],
    tx: optax.GradientTransformation,
    key: jax.Array,
    shardings: TrainState,
) -> TrainState:
    """ShapeDtypeStructs of the state laid out by `shardings`: the target for restoring a
    checkpoint onto any mesh without creating a fresh state first."""
    shapes = jax.eval_shape(lambda key: _initial_state(init_fn, tx, key), key)
    return abstract_state(shardings, shapes)


def abstract_state(shardings: TrainState, like: TrainState) -> TrainState:
    """ShapeDtypeStructs with `shardings`, the target for restoring a checkpoint onto a mesh."""
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), like, shardings
    )
