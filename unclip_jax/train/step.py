"""The pure train and eval steps, and their jitted forms with in/out shardings and donated state.

One train step: per-step key = fold_in(key, step); gradients accumulated over micro-batches
(`lax.scan`); optional bfloat16 compute with float32 master weights (parameters cast inside the
differentiated function, so gradients and updates stay float32); a step whose new parameters or
optimiser state would not be finite (a non-finite loss or gradient, a gradient whose square
overflows, a NaN learning rate: `update_is_finite`) leaves params, EMA and optimiser state
untouched and counts itself instead, so that no state a checkpoint could be written from is ever
non-finite. On several CPU devices with replicated parameters each device computes its rows'
gradients and the devices sum them in buckets (`data_parallel`).
"""

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from unclip_jax import sharding
from unclip_jax.nn.precision import cast_floats, compute_dtype
from unclip_jax.train import data_parallel
from unclip_jax.train import optimizer as optimizer_lib
from unclip_jax.train.state import TrainState, ema_decay, update_ema
from unclip_jax.train.task import Batch, Metrics, Task


@dataclasses.dataclass(frozen=True)
class StepConfig:
    grad_accum_steps: int = 1  # micro-batches per step; the global batch must split evenly
    compute_dtype: str = "float32"  # or "bfloat16": parameters cast for the forward/backward pass
    ema_decay: float = 0.9999
    ema_warmup: float = 10.0  # see state.ema_decay

    def __post_init__(self) -> None:
        compute_dtype(self.compute_dtype, "compute_dtype")
        if self.grad_accum_steps < 1:
            raise ValueError(f"grad_accum_steps must be >= 1, got {self.grad_accum_steps}")
        if not 0.0 <= self.ema_decay < 1.0 or self.ema_warmup < 1.0:
            raise ValueError(
                f"need 0 <= ema_decay < 1 and ema_warmup >= 1, got {self.ema_decay}, "
                f"{self.ema_warmup}"
            )

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict) -> "StepConfig":
        """From `config.train` (grad_accum_steps, compute_dtype) and `config.ema`."""
        return cls(
            grad_accum_steps=config.train.grad_accum_steps,
            compute_dtype=config.train.compute_dtype,
            ema_decay=config.ema.decay,
            ema_warmup=config.ema.warmup,
        )


def _micro_batches(batch: Batch, n: int) -> Batch:
    """[B, ...] → [n, B / n, ...]; micro-batch i holds rows i, i + n, i + 2n, ... so that each
    device keeps its own rows (no data movement under batch sharding)."""

    def split(x: jax.Array) -> jax.Array:
        x = x.reshape(x.shape[0] // n, n, *x.shape[1:])
        return jnp.swapaxes(x, 0, 1)

    return jax.tree.map(split, batch)


def update_is_finite(loss: jax.Array, grad_norm: jax.Array, learning_rate: jax.Array) -> jax.Array:
    """Whether a step's new parameters, EMA and optimiser state will all be finite, from three
    scalars known before the optimiser runs. A finite sum of squared gradients means every
    gradient and its square are finite, so Adam's moments stay finite (each a convex combination
    of finite values); with a finite learning rate, so do the updates. Deciding before the update
    keeps each parameter's update one fused pass: a check over the updates themselves makes every
    parameter's select wait on a reduction over all of them, which multiplied XLA's compile time
    and memory (a 16 px U-Net's step: over 10 minutes and 14 GB on a CPU)."""
    return jnp.isfinite(loss) & jnp.isfinite(grad_norm) & jnp.isfinite(learning_rate)


def _batch_gradients(loss_fn: Callable, n: int) -> Callable[[object, Batch, jax.Array], tuple]:
    """`(params, batch, key) -> (loss, metrics, gradients)` of `loss_fn(params, batch, key) ->
    (loss, metrics)`: means over the batch's rows, accumulated over `n` micro-batches (`lax.scan`,
    micro-batch i drawing from `fold_in(key, i)`)."""
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def gradients(params: object, batch: Batch, key: jax.Array) -> tuple:
        if n == 1:
            (loss, metrics), grads = grad_fn(params, batch, key)
            return loss, metrics, grads

        def accumulate(carry: tuple, xs: tuple) -> tuple:
            index, micro = xs
            (loss, metrics), grads = grad_fn(params, micro, jax.random.fold_in(key, index))
            total = jax.tree.map(jnp.add, carry, (loss, metrics, grads))
            return total, None

        micro = _micro_batches(batch, n)
        _, first_metrics = jax.eval_shape(loss_fn, params, jax.tree.map(lambda x: x[0], micro), key)
        zeros = jax.tree.map(jnp.zeros_like, (jnp.zeros((), jnp.float32), first_metrics, params))
        total, _ = jax.lax.scan(accumulate, zeros, (jnp.arange(n), micro))
        return jax.tree.map(lambda x: x / n, total)

    return gradients


def train_step(
    state: TrainState,
    batch: Batch,
    key: jax.Array,
    *,
    task: Task,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    config: StepConfig,
    per_device_mesh: Mesh | None = None,
) -> tuple[TrainState, Metrics]:
    """One optimiser step on the global `batch`. Pure; returns (new state, scalar metrics).

    per_device_mesh: compute each device's gradients of its rows and sum them in buckets over
    this mesh (`data_parallel`: CPU devices with replicated parameters); by default the
    partitioner reduces each parameter's gradient."""
    step_key = jax.random.fold_in(key, state.step)
    dtype = compute_dtype(config.compute_dtype)

    def loss_fn(params: object, micro: Batch, micro_key: jax.Array) -> tuple[jax.Array, Metrics]:
        loss, metrics = task.loss(cast_floats(params, dtype), micro, micro_key, True)
        return loss.astype(jnp.float32), metrics

    gradients = _batch_gradients(loss_fn, config.grad_accum_steps)
    if per_device_mesh is not None:
        gradients = data_parallel.per_device_mean(gradients, per_device_mesh)
    loss, metrics, grads = gradients(state.params, batch, step_key)
    grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, state.params)
    old_params = state.params
    applied = state.step - state.nonfinite_total  # updates applied so far
    grad_norm = optimizer_lib.global_norm(grads)
    learning_rate = schedule(applied)
    finite = update_is_finite(loss, grad_norm, learning_rate)
    updates, opt_state = tx.update(grads, state.opt_state, old_params)
    params = optax.apply_updates(old_params, updates)

    def keep_if_finite(new: object, old: object) -> object:
        return jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)

    # the EMA reads the kept parameters (computing their update again from the old ones would
    # be another read of those after their in-place update)
    params = keep_if_finite(params, old_params)
    opt_state = keep_if_finite(opt_state, state.opt_state)
    ema = update_ema(
        state.ema_params, params, ema_decay(applied, config.ema_decay, config.ema_warmup)
    )
    skipped = 1 - finite.astype(jnp.int32)
    new_state = TrainState(
        step=state.step + 1,
        params=params,
        ema_params=keep_if_finite(ema, state.ema_params),
        opt_state=opt_state,
        nonfinite_streak=(state.nonfinite_streak + 1) * skipped,
        nonfinite_total=state.nonfinite_total + skipped,
    )
    metrics = {
        **metrics,
        "loss": loss,
        "grad_norm": grad_norm,
        "learning_rate": learning_rate,
        "skipped": skipped,
        "nonfinite_streak": new_state.nonfinite_streak,
        "nonfinite_total": new_state.nonfinite_total,
    }
    return new_state, metrics


def eval_step(params: object, batch: Batch, key: jax.Array, *, task: Task) -> Metrics:
    return task.evaluate(params, batch, key)


def bind_train_step(
    task: Task,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    config: StepConfig,
    mesh: Mesh | None = None,
    param_shardings: object = None,
) -> Callable[[TrainState, Batch, jax.Array], tuple[TrainState, Metrics]]:
    """`train_step` with everything but (state, batch, key) bound; its gradients summed in
    buckets where the step runs on `mesh` with `param_shardings` that `data_parallel` buckets."""
    per_device = mesh is not None and data_parallel.uses_buckets(mesh, param_shardings)
    return functools.partial(
        train_step,
        task=task,
        tx=tx,
        schedule=schedule,
        config=config,
        per_device_mesh=mesh if per_device else None,
    )


def batch_shardings(mesh: Mesh, batch: Batch) -> dict[str, NamedSharding]:
    """Leading dimension over `data` × `fsdp`, the rest replicated, for every leaf of `batch`."""
    return jax.tree.map(lambda _: sharding.batch_sharding(mesh), batch)


@dataclasses.dataclass(frozen=True)
class ShardedStep:
    """A `jax.jit` function and the mesh and activation rules it is traced under, so that models'
    `sharding.constrain` calls take effect: call it, or `.lower(...)` it to compile ahead of
    time (abstract `jax.ShapeDtypeStruct` arguments with shardings are enough)."""

    jitted: jax.stages.Wrapped
    mesh: Mesh
    rules: sharding.Rules

    def __call__(self, *args: object) -> object:
        with sharding.activation_rules(self.mesh, self.rules):
            return self.jitted(*args)

    def lower(self, *args: object) -> jax.stages.Lowered:
        with sharding.activation_rules(self.mesh, self.rules):
            return self.jitted.lower(*args)


def jit_train_step(
    task: Task,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    config: StepConfig,
    state_shardings: TrainState,
    batch_spec: Batch,
    mesh: Mesh,
    rules: sharding.Rules,
) -> ShardedStep:
    """`train_step` jitted with in/out shardings (key and metrics replicated), the state donated:
    `(state, batch [B, ...], key) -> (state, metrics)`. Only the tree of `batch_spec` is read."""
    repl = sharding.replicated(mesh)
    fn = jax.jit(
        bind_train_step(task, tx, schedule, config, mesh, state_shardings.params),
        in_shardings=(state_shardings, batch_shardings(mesh, batch_spec), repl),
        out_shardings=(state_shardings, repl),
        donate_argnums=0,
    )
    return ShardedStep(fn, mesh, rules)


def jit_eval_step(
    task: Task, param_shardings: object, batch_spec: Batch, mesh: Mesh, rules: sharding.Rules
) -> ShardedStep:
    """`eval_step` jitted: `(params, batch [B, ...], key) -> metrics` (replicated)."""
    repl = sharding.replicated(mesh)
    fn = jax.jit(
        functools.partial(eval_step, task=task),
        in_shardings=(param_shardings, batch_shardings(mesh, batch_spec), repl),
        out_shardings=repl,
    )
    return ShardedStep(fn, mesh, rules)


def check_batch_size(global_batch: int, mesh: Mesh, grad_accum_steps: int) -> None:
    """Raise before compiling if the global batch does not split over devices and micro-batches."""
    shards = mesh.shape[sharding.DATA] * mesh.shape[sharding.FSDP]
    if global_batch % (shards * grad_accum_steps):
        raise ValueError(
            f"global batch size {global_batch} must be a multiple of data×fsdp ({shards}) × "
            f"grad_accum_steps ({grad_accum_steps})"
        )


def numeric(batch: dict) -> dict:
    """The leaves a compiled step can take: string arrays (e.g. raw captions) are left out."""
    return {k: v for k, v in batch.items() if np.asarray(v).dtype.kind not in "OUS"}


def to_global(batch: dict, mesh: Mesh) -> Batch:
    """Host-local numpy batch (`[B / process_count, ...]` per leaf) → global jax arrays sharded
    over `data` × `fsdp`; string leaves are left out (see `numeric`)."""
    spec = NamedSharding(mesh, P(sharding.BATCH_MESH_AXES))
    return {k: jax.make_array_from_process_local_data(spec, v) for k, v in numeric(batch).items()}
