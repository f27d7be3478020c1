"""Sharded train step: mesh equivalence, sharded parameters, accumulation, non-finite skipping."""

import re
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from unclip_jax import sharding
from unclip_jax.train import optimizer as optimizer_lib
from unclip_jax.train import state as state_lib
from unclip_jax.train import step as step_lib

sys.path.insert(0, str(Path(__file__).parent))
import tiny_task

GLOBAL_BATCH = 16
OPT = optimizer_lib.OptimizerConfig(
    peak_lr=1e-2, warmup_steps=2, total_steps=10, weight_decay=0.1, grad_clip_norm=1.0
)


DEFAULT_STEP = step_lib.StepConfig(ema_decay=0.9)


def make(mesh_shape, devices, step_config=DEFAULT_STEP, noise=0.01, task=None):
    """(state, jitted step, iterator) for the tiny task (or `task`) on a mesh of `devices`."""
    mesh = sharding.make_mesh(mesh_shape, devices)
    task = task or tiny_task.TinyTask(noise)
    spec = {"x": jax.ShapeDtypeStruct((1, tiny_task.DIM), jnp.float32)}
    init_fn = lambda key: task.init(key, spec)
    mask = optimizer_lib.decay_mask(jax.eval_shape(init_fn, jax.random.key(0)))
    tx = optimizer_lib.make_optimizer(OPT, mask)
    state, shardings = state_lib.create_train_state(
        init_fn, tx, jax.random.key(0), mesh, sharding.DEFAULT_RULES
    )
    data = tiny_task.TinyIterator(GLOBAL_BATCH)
    batch_spec = data.global_batch_at(0)
    step = step_lib.jit_train_step(
        task,
        tx,
        optimizer_lib.learning_rate_schedule(OPT),
        step_config,
        shardings,
        batch_spec,
        mesh,
        sharding.DEFAULT_RULES,
    )
    return state, step, data, mesh


def run(state, step, data, mesh, steps):
    metrics = []
    for _ in range(steps):
        state, m = step(state, step_lib.to_global(next(data), mesh), jax.random.key(7))
        metrics.append(jax.device_get(m))
    return state, metrics


def close(a, b, atol):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=atol, rtol=0)


@pytest.fixture(scope="module")
def one_device_run():
    state, step, data, mesh = make({"data": 1}, jax.devices()[:1])
    return run(state, step, data, mesh, 5)


def test_mesh_4x2_equals_one_device_and_params_are_sharded(one_device_run):
    state, step, data, mesh = make({"data": 4, "fsdp": 2}, jax.devices())
    kernel = state.params["Dense_0"]["kernel"]  # [EMBED=8, MLP=32]: embed over fsdp
    assert kernel.sharding.spec == jax.sharding.PartitionSpec("fsdp", None)
    assert {s.data.shape for s in kernel.addressable_shards} == {(4, 32)}
    mu = state.opt_state[1][0].mu["Dense_0"]["kernel"]
    assert mu.sharding.spec == jax.sharding.PartitionSpec("fsdp", None)
    state, metrics = run(state, step, data, mesh, 5)
    ref_state, ref_metrics = one_device_run
    assert int(state.step) == 5
    close(state.params, ref_state.params, 1e-5)
    close(state.ema_params, ref_state.ema_params, 1e-5)
    close(state.opt_state, ref_state.opt_state, 1e-5)
    np.testing.assert_allclose(
        [m["loss"] for m in metrics], [m["loss"] for m in ref_metrics], rtol=1e-5
    )
    assert metrics[-1]["loss"] < metrics[0]["loss"]


def test_grad_accumulation_equals_whole_batch():
    whole = run(*make({"data": 2}, jax.devices()[:2], noise=0.0), 3)[0]
    config = step_lib.StepConfig(ema_decay=0.9, grad_accum_steps=4)
    state, step, data, mesh = make({"data": 2}, jax.devices()[:2], config, noise=0.0)
    state, _ = run(state, step, data, mesh, 3)
    close(state.params, whole.params, 1e-5)
    close(state.opt_state, whole.opt_state, 1e-5)


def test_nonfinite_batch_is_skipped_and_counted():
    state, step, _, mesh = make({"data": 2}, jax.devices()[:2])
    data = tiny_task.TinyIterator(GLOBAL_BATCH, poison={1, 2})
    state, _ = run(state, step, data, mesh, 1)
    before = jax.device_get((state.params, state.ema_params, state.opt_state))
    state, metrics = run(state, step, data, mesh, 2)
    after = jax.device_get((state.params, state.ema_params, state.opt_state))
    close(after, before, 0.0)
    assert [m["skipped"] for m in metrics] == [1, 1]
    assert (int(state.step), int(state.nonfinite_streak), int(state.nonfinite_total)) == (3, 2, 2)
    state, metrics = run(state, step, data, mesh, 1)
    assert metrics[0]["skipped"] == 0 and np.isfinite(metrics[0]["loss"])
    assert (int(state.nonfinite_streak), int(state.nonfinite_total)) == (0, 2)


def test_bfloat16_compute_keeps_float32_master_weights(one_device_run):
    config = step_lib.StepConfig(ema_decay=0.9, compute_dtype="bfloat16")
    state, step, data, mesh = make({"data": 1}, jax.devices()[:1], config)
    state, _ = run(state, step, data, mesh, 5)
    assert {x.dtype for x in jax.tree.leaves(state.params)} == {jnp.dtype(jnp.float32)}
    # Close to the float32 run but not identical: the compute really was bfloat16.
    ref = one_device_run[0].params["Dense_0"]["kernel"]
    diff = np.abs(np.asarray(state.params["Dense_0"]["kernel"]) - np.asarray(ref)).max()
    assert 0 < diff < 5e-2


def test_ema_decay_warmup_closed_form():
    decays = state_lib.ema_decay(jnp.arange(4), 0.999, 10.0)
    np.testing.assert_allclose(decays, [1 / 10, 2 / 11, 3 / 12, 4 / 13], rtol=1e-6)
    assert float(state_lib.ema_decay(10**6, 0.999, 10.0)) == pytest.approx(0.999)
    ema = state_lib.update_ema({"w": jnp.ones(3)}, {"w": jnp.zeros(3)}, jnp.float32(0.25))
    np.testing.assert_allclose(ema["w"], 0.25)


def test_step_config_rejects_bad_values():
    with pytest.raises(ValueError, match=r"compute_dtype.*'float16'"):
        step_lib.StepConfig(compute_dtype="float16")
    with pytest.raises(ValueError, match="grad_accum_steps must be >= 1, got 0"):
        step_lib.StepConfig(grad_accum_steps=0)
    mesh = sharding.make_mesh({"data": 4, "fsdp": 2})
    with pytest.raises(ValueError, match="global batch size 12 must be a multiple"):
        step_lib.check_batch_size(12, mesh, 1)


def test_nonfinite_update_is_skipped_and_leaves_the_state():
    """A NaN learning rate makes finite gradients give NaN parameters and moments: the step must
    skip it (state untouched, counted), not only look at the loss and gradients."""
    mesh = sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
    task = tiny_task.TinyTask(0.0)
    spec = {"x": jax.ShapeDtypeStruct((1, tiny_task.DIM), jnp.float32)}
    init_fn = lambda key: task.init(key, spec)
    tx = optax.adam(float("nan"))
    state, _ = state_lib.create_train_state(
        init_fn, tx, jax.random.key(0), mesh, sharding.DEFAULT_RULES
    )
    batch = {k: jnp.asarray(v) for k, v in tiny_task.TinyIterator(4).global_batch_at(0).items()}
    new, metrics = step_lib.train_step(
        state, batch, jax.random.key(1), task=task, tx=tx,
        schedule=lambda _: jnp.nan, config=DEFAULT_STEP,
    )  # fmt: skip
    assert int(metrics["skipped"]) == 1 and int(new.nonfinite_streak) == 1
    for old_leaf, new_leaf in zip(
        jax.tree.leaves((state.params, state.opt_state)),
        jax.tree.leaves((new.params, new.opt_state)),
        strict=True,
    ):
        np.testing.assert_array_equal(np.asarray(new_leaf), np.asarray(old_leaf))


def test_update_is_finite_reads_the_loss_gradients_and_learning_rate():
    one = jnp.float32(1.0)
    assert bool(step_lib.update_is_finite(one, one, one))
    for bad in (jnp.nan, jnp.inf, -jnp.inf):
        for position in range(3):
            values = [one, one, one]
            values[position] = jnp.float32(bad)
            assert not bool(step_lib.update_is_finite(*values))
    # A gradient whose square overflows float32 would overflow Adam's second moment: its norm is
    # infinite, so the step is skipped; large but safe gradients pass.
    huge = optimizer_lib.global_norm({"g": jnp.full((2,), 2e19, jnp.float32)})
    assert not bool(step_lib.update_is_finite(one, huge, one))
    large = optimizer_lib.global_norm({"g": jnp.full((1000,), 1e17, jnp.float32)})
    assert bool(step_lib.update_is_finite(one, large, one))


class LossOnly(tiny_task.TinyTask):
    """The tiny task without its metric (a metric read of a parameter that the update does not
    wait for is one XLA must copy the parameter for)."""

    def loss(self, params, batch, key, train):
        return super().loss(params, batch, key, train)[0], {}


def test_the_step_updates_each_parameter_in_its_donated_buffer():
    """The compiled step copies no parameter at its entry: the EMA reads the kept parameters
    rather than computing their update again from the old ones, a read of those after their
    in-place update that made XLA copy every parameter first."""
    state, step, data, mesh = make({"data": 1}, jax.devices()[:1], task=LossOnly())
    batch = step_lib.to_global(next(data), mesh)
    entry = step.lower(state, batch, jax.random.key(7)).compile().as_text().split("\nENTRY")[1]
    copied = set(re.findall(r"= \S+ copy\(%state_(\w+?)__", entry))
    assert "opt_state_1" in copied, "no moment copied: the state's names in the HLO changed"
    assert not copied & {"params", "ema_params"}, sorted(copied)
