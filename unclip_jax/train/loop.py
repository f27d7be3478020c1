"""`train_and_evaluate(config, workdir, task, train_data, ...)`: the loop every stage trains with.

It builds the mesh and the training setup (`setup.py`: optimiser, state created sharded, jitted
step), or resumes the state, data iterator included, from the latest complete checkpoint in
`<workdir>/checkpoints`, then runs the train step; it logs loss,
gradient norm, learning rate, samples/s and step time to TensorBoard (`<workdir>/tensorboard`)
and the console (`run_log.RunLog`: written by the calling thread, its failures raised),
evaluates and draws sample grids (`<workdir>/samples/step_<N>.png`) periodically, saves
checkpoints, and on SIGTERM saves at the next step boundary and raises `checkpoints.Preempted`.
The config and the workdir are checked first (`run_config`). `max_nonfinite_steps` skipped steps
in a row raise `NonFiniteError`; periodic checkpoints are not written while steps are being
skipped, so the last good one stays the latest. A failed write (a full disk) raises an OSError
naming its path at once; the last complete checkpoint stays. The workdir may be a bucket
(gs://bucket/run, `storage.locations`): checkpoints, TensorBoard events, samples, run.json and
run.log all go there.
"""

import contextlib
import dataclasses
import json
import os
import time
from collections.abc import Callable, Iterable, Sequence

import jax
import ml_collections
import numpy as np
from absl import logging
from etils import epath
from tqdm import tqdm

from unclip_jax import console, hlo_cost, sharding
from unclip_jax.storage import locations, run_record
from unclip_jax.train import checkpoints as checkpoints_lib
from unclip_jax.train import images as images_lib
from unclip_jax.train import optimizer as optimizer_lib
from unclip_jax.train import run_config
from unclip_jax.train import setup as setup_lib
from unclip_jax.train import state as state_lib
from unclip_jax.train import step as step_lib
from unclip_jax.train.run_log import RunLog
from unclip_jax.train.task import Batch, DataIterator, Task

Hook = Callable[[int, state_lib.TrainState], None]
COMPUTE_FILE = "compute.json"  # the train step's FLOPs (`train.count_flops`)
BUCKET_LOG_FLUSH_SECONDS = 30.0  # run.log in a bucket: each flush uploads the whole file


class NonFiniteError(FloatingPointError):
    """Too many consecutive train steps had a non-finite loss or gradients."""


@dataclasses.dataclass(frozen=True)
class LoopConfig:
    total_steps: int
    batch_size: int  # global
    max_nonfinite_steps: int
    log_every: int
    eval_every: int
    eval_with_ema: bool
    sample_every: int
    num_samples: int
    checkpoint_every: int
    max_to_keep: int
    async_save: bool
    count_flops: bool  # write the train step's FLOPs to <workdir>/compute.json (one compile)

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict) -> "LoopConfig":
        t, c = config.train, config.checkpoint
        return cls(
            total_steps=t.total_steps,
            batch_size=t.batch_size,
            max_nonfinite_steps=t.max_nonfinite_steps,
            log_every=t.log_every,
            eval_every=t.eval_every,
            eval_with_ema=t.eval_with_ema,
            sample_every=t.sample_every,
            num_samples=t.num_samples,
            checkpoint_every=c.every_steps,
            max_to_keep=c.max_to_keep,
            async_save=c.async_save,
            count_flops=t.get("count_flops", False),
        )


def _every(step: int, period: int) -> bool:
    return period > 0 and step % period == 0


def _example_spec(batch: dict) -> dict[str, jax.ShapeDtypeStruct]:
    """Shapes of a batch of one example (`[1, ...]`), from a host-local batch."""
    return {
        k: jax.ShapeDtypeStruct((1, *v.shape[1:]), v.dtype)
        for k, v in step_lib.numeric(batch).items()
    }


def _evaluate(
    eval_fn: Callable, params: object, batches: Iterable[Batch], mesh: jax.sharding.Mesh
) -> dict[str, float]:
    """Mean of each metric over the eval batches."""
    totals: dict[str, float] = {}
    count = 0
    for index, batch in enumerate(batches):
        metrics = jax.device_get(eval_fn(params, step_lib.to_global(batch, mesh), index))
        for name, value in metrics.items():
            totals[name] = totals.get(name, 0.0) + float(value)
        count += 1
    if count == 0:
        raise ValueError("eval_data() yielded no batches")
    return {name: total / count for name, total in totals.items()}


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str | os.PathLike,
    task: Task,
    train_data: DataIterator,
    eval_data: Callable[[], Iterable[Batch]] | None = None,
    hooks: Sequence[Hook] = (),
) -> state_lib.TrainState:
    """Trains `task` to `config.train.total_steps`, resuming from `workdir` when it holds a
    checkpoint; returns the final state.

    train_data: host-local batches (the protocol in `task.py`); eval_data: makes a fresh iterable
    of host-local eval batches per evaluation; hooks: called as `hook(step, state)` after each
    step (and its checkpoint save), e.g. for custom logging.
    """
    workdir = run_config.check_workdir(workdir)
    run_config.check_config(config)
    loop = LoopConfig.from_config(config)
    mesh = sharding.make_mesh(dict(config.mesh))
    rules = sharding.normalize_rules(config.sharding.rules)
    step_config = step_lib.StepConfig.from_config(config)
    opt_config = optimizer_lib.OptimizerConfig.from_config(config)
    step_lib.check_batch_size(loop.batch_size, mesh, step_config.grad_accum_steps)

    first_batch = next(train_data)
    local = next(iter(first_batch.values())).shape[0]
    if local * jax.process_count() != loop.batch_size:
        raise ValueError(
            f"train_data yields {local} examples per process × {jax.process_count()} processes, "
            f"but config.train.batch_size is {loop.batch_size}"
        )
    chief = jax.process_index() == 0
    if chief:  # every check passed: this run writes to the workdir
        run_record.append_record(workdir, run_record.run_record(config))
    init_key, train_key, eval_key = jax.random.split(jax.random.key(config.seed), 3)
    setup = setup_lib.build(
        task,
        _example_spec(first_batch),
        loop.batch_size,
        mesh,
        rules,
        opt_config,
        step_config,
        init_key,
    )
    checkpoints = checkpoints_lib.Checkpoints(
        workdir / "checkpoints", max_to_keep=loop.max_to_keep, async_save=loop.async_save
    )
    latest = checkpoints.latest_step()
    pending: dict | None = first_batch
    if latest is None:
        state = setup.create_state()
    else:
        state, data_state = checkpoints.restore(latest, setup.abstract_state())
        train_data.set_state(data_state)
        pending = None
        logging.info("resumed from step %d in %s", latest, checkpoints.directory)

    if loop.count_flops and chief:  # lowered from the real inputs: the first step reuses it
        inputs = (state, step_lib.to_global(first_batch, mesh), train_key)
        record_compute(workdir, setup, loop.total_steps, inputs)

    sample_jit = jax.jit(task.sample, static_argnums=2, out_shardings=sharding.replicated(mesh))
    run = _Run(
        loop=loop,
        workdir=workdir,
        task=task,
        setup=setup,
        eval_fn=_make_eval_fn(task, setup.shardings.params, mesh, rules, eval_key),
        sample_fn=step_lib.ShardedStep(sample_jit, mesh, rules),
        eval_key=eval_key,
        checkpoints=checkpoints,
        logger=RunLog(workdir, jax.process_index() == 0),
    )
    flush_seconds = BUCKET_LOG_FLUSH_SECONDS if locations.is_uri(workdir) else 0.0
    log_path = workdir / console.LOG_FILE
    logged = console.log_file(log_path, flush_seconds) if chief else contextlib.nullcontext()
    with logged:
        return run.train(state, train_data, pending, train_key, eval_data, hooks)


def record_compute(
    workdir: epath.Path,
    setup: setup_lib.TrainSetup,
    total_steps: int,
    inputs: tuple = (),
) -> dict:
    """Writes `<workdir>/compute.json`: the compiled train step's FLOPs per device (every loop
    trip counted, `hlo_cost`), over all devices, and over the run's `total_steps`.

    inputs: (state, global batch, key) to lower for, so that the step's first call finds the
    compiled program in JAX's cache; by default the setup's abstract inputs (one more compile).
    """
    text = setup.lower(*inputs).compile().as_text()
    per_device = hlo_cost.program_flops(text)
    devices = setup.mesh.size
    record = dict(
        flops_per_step_per_device=per_device,
        devices=devices,
        flops_per_step=per_device * devices,
        total_steps=total_steps,
        flops=per_device * devices * total_steps,
    )
    (workdir / COMPUTE_FILE).write_text(json.dumps(record, indent=1) + "\n")
    return record


@dataclasses.dataclass
class _Run:
    """The steps of one run after its state is ready: train, log, evaluate, sample, save."""

    loop: LoopConfig
    workdir: epath.Path
    task: Task
    setup: setup_lib.TrainSetup
    eval_fn: Callable[[object, Batch, int], dict]
    sample_fn: Callable[[object, jax.Array, int], jax.Array]
    eval_key: jax.Array
    checkpoints: checkpoints_lib.Checkpoints
    logger: RunLog
    last_time: float = 0.0  # when the last train metrics were logged (perf_counter)
    last_step: int = 0  # the step they were logged at

    def train(
        self,
        state: state_lib.TrainState,
        train_data: DataIterator,
        pending: dict | None,
        train_key: jax.Array,
        eval_data: Callable[[], Iterable[Batch]] | None,
        hooks: Sequence[Hook],
    ) -> state_lib.TrainState:
        """Steps from `state.step` to `loop.total_steps`; `pending` is a batch already taken from
        `train_data` for the first step. At a preemption notice: saves, then `Preempted`."""
        loop, mesh, checkpoints = self.loop, self.setup.mesh, self.checkpoints
        watcher = checkpoints_lib.PreemptionWatcher()
        step = int(jax.device_get(state.step))
        primary = self.logger.enabled
        progress = tqdm(total=loop.total_steps, initial=step, disable=not primary, desc="train")
        self.last_time, self.last_step = time.perf_counter(), step
        previous: dict | None = None  # metrics of the step before, read one step late
        try:
            while step < loop.total_steps:
                batch = pending if pending is not None else next(train_data)
                pending = None
                state, metrics = self.setup.step(state, step_lib.to_global(batch, mesh), train_key)
                step += 1
                progress.update(1)
                if previous is not None:  # waits for the step before only: dispatch stays ahead
                    _check_streak(previous, step - 1, loop, checkpoints)
                previous = metrics
                if _every(step, loop.log_every) or step == loop.total_steps:
                    loss = self._log_train(step, metrics)
                    progress.set_postfix(loss=f"{loss:.4g}")
                self._eval_and_sample(step, state, eval_data)
                preempted = watcher.should_stop(step)
                periodic = _every(step, loop.checkpoint_every) or step == loop.total_steps
                if preempted or periodic:
                    streak = _check_streak(metrics, step, loop, checkpoints)
                    if preempted or streak == 0:  # no periodic save while steps are being skipped
                        checkpoints.save(state, train_data.get_state(), force=True)
                for hook in hooks:
                    hook(step, state)
                if preempted:
                    checkpoints.wait()
                    logging.info("preemption notice: saved step %d, stopping", step)
                    raise checkpoints_lib.Preempted(step, checkpoints.directory)
            if previous is not None:
                _check_streak(previous, step, loop, checkpoints)
            checkpoints.wait()
        finally:
            progress.close()
            watcher.close()
            self.logger.close()
            checkpoints.close()
        return state

    def _log_train(self, step: int, metrics: dict) -> float:
        """Logs the step's metrics with samples/s and step time since the last log; the loss."""
        now = time.perf_counter()
        values = {k: float(v) for k, v in jax.device_get(metrics).items()}
        elapsed = max(now - self.last_time, 1e-9)
        values["samples_per_second"] = (step - self.last_step) * self.loop.batch_size / elapsed
        values["step_time"] = elapsed / max(step - self.last_step, 1)
        self.logger.scalars(step, "train", values)
        self.last_time, self.last_step = now, step
        return values["loss"]

    def _eval_and_sample(
        self,
        step: int,
        state: state_lib.TrainState,
        eval_data: Callable[[], Iterable[Batch]] | None,
    ) -> None:
        """Periodic evaluation and sample grid (`<workdir>/samples/step_<N>.png`)."""
        loop, mesh = self.loop, self.setup.mesh
        eval_params = state.ema_params if loop.eval_with_ema else state.params
        if eval_data is not None and _every(step, loop.eval_every):
            self.logger.scalars(
                step, "eval", _evaluate(self.eval_fn, eval_params, eval_data(), mesh)
            )
        if self.task.generates_images and _every(step, loop.sample_every):
            key = jax.random.fold_in(self.eval_key, step)
            samples = self.sample_fn(eval_params, key, loop.num_samples)
            grid = images_lib.image_grid(np.asarray(jax.device_get(samples)))
            self.logger.image(step, "samples", grid)


def _check_streak(
    metrics: dict, step: int, loop: LoopConfig, checkpoints: checkpoints_lib.Checkpoints
) -> int:
    """The count of consecutive skipped steps after `step`; NonFiniteError once it reaches
    `max_nonfinite_steps`."""
    streak = int(jax.device_get(metrics["nonfinite_streak"]))
    if streak >= loop.max_nonfinite_steps:
        checkpoints.wait()
        raise NonFiniteError(
            f"{streak} consecutive train steps (up to step {step}) had a non-finite loss "
            f"or gradients (train.max_nonfinite_steps={loop.max_nonfinite_steps}); "
            f"last complete checkpoint: step {checkpoints.latest_step()} in "
            f"{checkpoints.directory}"
        )
    return streak


def _make_eval_fn(
    task: Task,
    param_shardings: object,
    mesh: jax.sharding.Mesh,
    rules: sharding.Rules,
    key: jax.Array,
) -> Callable[[object, Batch, int], dict]:
    """eval_fn(params, global batch, index): the jitted eval step (compiled once per batch shape)
    with key fold_in(key, index), so every evaluation sees the same randomness."""
    compiled: dict = {}

    def eval_fn(params: object, batch: Batch, index: int) -> dict:
        shapes = tuple((k, v.shape) for k, v in sorted(batch.items()))
        if shapes not in compiled:
            compiled[shapes] = step_lib.jit_eval_step(task, param_shardings, batch, mesh, rules)
        return compiled[shapes](params, batch, jax.random.fold_in(key, index))

    return eval_fn
