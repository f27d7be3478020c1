"""Checkpoints: bitwise resume after SIGKILL, SIGTERM → save and exit 143, interrupted saves
ignored, restore onto other meshes, EMA parameters alone for sampling."""

import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tiny_runs
import tiny_task

from unclip_jax import sharding
from unclip_jax.storage import checkpoints as storage
from unclip_jax.train import checkpoints as checkpoints_lib
from unclip_jax.train import optimizer as optimizer_lib
from unclip_jax.train import state as state_lib
from unclip_jax.train import step as step_lib


def test_resume_after_sigkill_is_bitwise(tmp_path, straight_run, compile_cache):
    tiny_runs.run(tmp_path, "--kill_at", "3", "--sync_save", cache_dir=compile_cache, expect=-9)
    assert tiny_runs.complete_steps(tmp_path) == [1, 2, 3]
    dump = tmp_path / "out.npz"
    tiny_runs.run(tmp_path, "--dump", str(dump), cache_dir=compile_cache)
    resumed = tiny_runs.load(dump)
    assert int(resumed["start_step"]) == 3
    assert int(resumed[".step"]) == 6
    tiny_runs.assert_same(resumed, straight_run)  # params, opt state, EMA, step, next batch


def test_sigterm_saves_current_step_and_exits_143(tmp_path, straight_run, compile_cache):
    process = tiny_runs.start(
        tmp_path, "--step_sleep", "0.5", "--checkpoint_every", "100", cache_dir=compile_cache
    )
    tiny_runs.wait_for_progress(tmp_path, 0, 2)
    process.send_signal(tiny_runs.SIGTERM)
    code, output = tiny_runs.finish(process)
    assert code == 143, output[-3000:]
    stopped = tiny_runs.progress(tmp_path)
    assert 2 <= stopped < 6
    assert tiny_runs.complete_steps(tmp_path) == [stopped]
    dump = tmp_path / "out.npz"
    tiny_runs.run(tmp_path, "--dump", str(dump), cache_dir=compile_cache)
    resumed = tiny_runs.load(dump)
    assert int(resumed["start_step"]) == stopped
    tiny_runs.assert_same(resumed, straight_run)


def test_save_killed_midway_is_ignored_and_refused(tmp_path, straight_run, compile_cache):
    args = ("--checkpoint_every", "2")
    process = tiny_runs.start(tmp_path, *args, "--hang_save_at", "4", cache_dir=compile_cache)
    marker = tmp_path / "hanging"
    for _ in range(900):
        if marker.exists() or process.poll() is not None:
            break
        time.sleep(0.1)
    assert marker.exists(), "the save of step 4 never reached its commit"
    process.kill()
    tiny_runs.finish(process)
    checkpoints = tmp_path / "checkpoints"
    assert tiny_runs.complete_steps(tmp_path) == [2]
    (incomplete,) = [p for p in checkpoints.iterdir() if p.name.startswith("4.")]
    with pytest.raises(ValueError, match=r"is incomplete.*complete steps in .*: \[2\]"):
        storage.restore_ema_params(incomplete)
    assert storage.resolve_step_dir(checkpoints).name == "2"
    dump = tmp_path / "out.npz"
    tiny_runs.run(tmp_path, *args, "--dump", str(dump), cache_dir=compile_cache)
    resumed = tiny_runs.load(dump)
    assert int(resumed["start_step"]) == 2
    tiny_runs.assert_same(resumed, straight_run)


def test_no_complete_checkpoint_is_a_clear_error(tmp_path):
    (tmp_path / "3.orbax-checkpoint-tmp").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no complete checkpoint.*3\.orbax"):
        storage.restore_ema_params(tmp_path)


def _state_on(mesh):
    task = tiny_task.TinyTask()
    spec = {"x": jax.ShapeDtypeStruct((1, tiny_task.DIM), jnp.float32)}
    init_fn = lambda key: task.init(key, spec)
    config = optimizer_lib.OptimizerConfig(peak_lr=1e-2, warmup_steps=1, total_steps=4)
    tx = optimizer_lib.make_optimizer(config, True)
    return state_lib.create_train_state(
        init_fn, tx, jax.random.key(0), mesh, sharding.DEFAULT_RULES
    ), (task, tx, config)


def test_restore_onto_other_meshes(tmp_path):
    mesh = sharding.make_mesh({"data": 4, "fsdp": 2})
    (state, shardings), (task, tx, config) = _state_on(mesh)
    data = tiny_task.TinyIterator(16)
    train = step_lib.jit_train_step(
        task,
        tx,
        optimizer_lib.learning_rate_schedule(config),
        step_lib.StepConfig(ema_decay=0.5),
        shardings,
        data.global_batch_at(0),
        mesh,
        sharding.DEFAULT_RULES,
    )
    state, _ = train(state, step_lib.to_global(next(data), mesh), jax.random.key(1))
    assert state.params["Dense_0"]["kernel"].sharding.spec == jax.sharding.PartitionSpec(
        "fsdp", None
    )
    saved = jax.device_get(state)
    checkpoints = checkpoints_lib.Checkpoints(tmp_path, async_save=False)
    checkpoints.save(state, data.get_state())
    checkpoints.close()

    for target_mesh in (
        sharding.make_mesh({"data": 8}),
        sharding.make_mesh({"data": 1}, jax.devices()[:1]),
    ):
        (fresh, target_shardings), _ = _state_on(target_mesh)
        restored, data_state = checkpoints_lib.Checkpoints(tmp_path).restore(
            1, state_lib.abstract_state(target_shardings, fresh)
        )
        assert data_state == {"index": 1}
        kernel = restored.opt_state[1][0].mu["Dense_0"]["kernel"]
        assert kernel.sharding.mesh.shape == target_mesh.shape
        for a, b in zip(jax.tree.leaves(saved), jax.tree.leaves(restored), strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    ema = storage.restore_ema_params(tmp_path)
    for a, b in zip(jax.tree.leaves(saved.ema_params), jax.tree.leaves(ema), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
