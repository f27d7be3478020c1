"""One training setup for a task on a mesh: the optimiser, the state's shardings, the state (real,
created already sharded, or abstract) and the jitted train step, built the same way for the loop,
the throughput benchmark and ahead-of-time compilation for TPU topologies.

    setup = build(task, example, global_batch, mesh, rules, optimizer, step, key)
    state = setup.create_state()                    # or setup.abstract_state() to restore into
    state, metrics = setup.step(state, batch, key)  # batch: global arrays [B, ...]
    compiled = setup.lower().compile()              # abstract inputs carrying their shardings
"""

import dataclasses
from collections.abc import Callable

import jax
import optax
from jax.sharding import Mesh

from unclip_jax import sharding
from unclip_jax.train import optimizer as optimizer_lib
from unclip_jax.train import state as state_lib
from unclip_jax.train import step as step_lib
from unclip_jax.train.state import TrainState
from unclip_jax.train.task import Batch, Metrics, Task


@dataclasses.dataclass(frozen=True)
class TrainSetup:
    """Everything a train step needs besides the state and the batch, and the step itself."""

    task: Task
    mesh: Mesh
    rules: sharding.Rules
    step_config: step_lib.StepConfig
    tx: optax.GradientTransformation
    schedule: optax.Schedule  # learning rate after n applied updates (for the metrics)
    init_fn: Callable[[jax.Array], object]  # key -> boxed parameters (logical axis names)
    key: jax.Array  # parameter initialisation key
    shardings: TrainState  # a NamedSharding per field
    batch_spec: Batch  # ShapeDtypeStructs [B, ...] (global batch) with the batch sharding
    step: step_lib.ShardedStep  # (state, batch, key) -> (state, metrics); state donated

    def create_state(self) -> TrainState:
        """A fresh state created already sharded (`jit(init, out_shardings=shardings)`)."""
        return state_lib.init_train_state(self.init_fn, self.tx, self.key, self.shardings)

    def abstract_state(self) -> TrainState:
        """ShapeDtypeStructs of the state with its shardings: a restore target or a compile
        argument; nothing is computed."""
        return state_lib.abstract_train_state(self.init_fn, self.tx, self.key, self.shardings)

    def abstract_inputs(self) -> tuple[TrainState, Batch, jax.ShapeDtypeStruct]:
        """(state, batch [B, ...], key) as ShapeDtypeStructs carrying their shardings."""
        repl = sharding.replicated(self.mesh)
        key = jax.ShapeDtypeStruct(self.key.shape, self.key.dtype, sharding=repl)
        return self.abstract_state(), self.batch_spec, key

    def lower(self, *inputs: object) -> jax.stages.Lowered:
        """The train step lowered for (state, batch, key), by default `abstract_inputs()`;
        `.compile()` it for the mesh's devices, described TPU chips included."""
        return self.step.lower(*(inputs or self.abstract_inputs()))

    @property
    def pure_step(self) -> Callable[[TrainState, Batch, jax.Array], tuple[TrainState, Metrics]]:
        """The unjitted step with this setup's task, optimiser and config bound, written for the
        whole batch (gradients reduced by the partitioner, never summed per device in buckets):
        its lowered program's cost analysis counts the whole step's FLOPs."""
        return step_lib.bind_train_step(self.task, self.tx, self.schedule, self.step_config)


def _global_batch_spec(
    example: dict[str, jax.ShapeDtypeStruct], global_batch: int, mesh: Mesh
) -> Batch:
    """`example` ([1, ...] per leaf) at `global_batch` rows, sharded over `data` × `fsdp`."""
    wrong = {k: v.shape for k, v in example.items() if v.shape[:1] != (1,)}
    if wrong:
        raise ValueError(f"example shapes must be [1, ...] (one example), got {wrong}")
    batch_sharding = sharding.batch_sharding(mesh)
    return {
        k: jax.ShapeDtypeStruct((global_batch, *v.shape[1:]), v.dtype, sharding=batch_sharding)
        for k, v in example.items()
    }


def build(
    task: Task,
    example: dict[str, jax.ShapeDtypeStruct],
    global_batch: int,
    mesh: Mesh,
    rules: sharding.Rules,
    optimizer: optimizer_lib.OptimizerConfig,
    step_config: step_lib.StepConfig,
    key: jax.Array,
) -> TrainSetup:
    """The setup of `task` on `mesh`: AdamW with the weight-decay mask of the task's parameters,
    the state's shardings under `rules`, and the step jitted for batches of `global_batch` rows
    split into `step_config.grad_accum_steps` micro-batches.

    example: shapes of one example (`[1, ...]` per leaf), as `Task.init` takes them; key: the
    parameter initialisation key. Raises ValueError before tracing anything if the batch does
    not split over the mesh and the micro-batches.
    """
    if global_batch < 1:
        raise ValueError(f"global_batch must be >= 1, got {global_batch}")
    step_lib.check_batch_size(global_batch, mesh, step_config.grad_accum_steps)
    batch_spec = _global_batch_spec(example, global_batch, mesh)
    init_fn = lambda k: task.init(k, example)
    schedule = optimizer_lib.learning_rate_schedule(optimizer)
    mask = optimizer_lib.decay_mask(jax.eval_shape(init_fn, key))
    tx = optimizer_lib.make_optimizer(optimizer, mask)
    shardings = state_lib.train_state_shardings(init_fn, tx, key, mesh, rules)
    step = step_lib.jit_train_step(
        task, tx, schedule, step_config, shardings, batch_spec, mesh, rules
    )
    return TrainSetup(
        task=task,
        mesh=mesh,
        rules=rules,
        step_config=step_config,
        tx=tx,
        schedule=schedule,
        init_fn=init_fn,
        key=key,
        shardings=shardings,
        batch_spec=batch_spec,
        step=step,
    )
