"""The one training setup: its step compiled ahead of time on abstract inputs equals the jitted
step the loop calls, and its state is created sharded as the rules say."""

import math
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from unclip_jax import sharding
from unclip_jax.train import optimizer as optimizer_lib
from unclip_jax.train import setup as setup_lib
from unclip_jax.train import step as step_lib

sys.path.insert(0, str(Path(__file__).parent))
import tiny_task

GLOBAL_BATCH = 16
EXAMPLE = {
    "x": jax.ShapeDtypeStruct((1, tiny_task.DIM), jnp.float32),
    "y": jax.ShapeDtypeStruct((1, tiny_task.DIM), jnp.float32),
}
OPT = optimizer_lib.OptimizerConfig(
    peak_lr=1e-2, warmup_steps=0, total_steps=10, weight_decay=0.1, grad_clip_norm=1.0
)  # no warm-up: the first step already moves the parameters


def build(mesh_shape, rules=sharding.DEFAULT_RULES, accum=1, example=EXAMPLE, batch=GLOBAL_BATCH):
    return setup_lib.build(
        tiny_task.TinyTask(),
        example,
        batch,
        sharding.make_mesh(mesh_shape, jax.devices()[: math.prod(mesh_shape.values())]),
        rules,
        OPT,
        step_lib.StepConfig(ema_decay=0.9, grad_accum_steps=accum),
        jax.random.key(0),
    )


@pytest.mark.parametrize("accum", [1, 2])
def test_aot_compiled_step_equals_jitted_step(accum):
    setup = build({"data": 4, "fsdp": 2}, accum=accum)
    compiled = setup.lower().compile()  # abstract state, batch and key: nothing materialised
    batch = step_lib.to_global(tiny_task.TinyIterator(GLOBAL_BATCH).global_batch_at(0), setup.mesh)
    key = jax.random.key(7)
    initial = jax.device_get(setup.create_state())
    aot_state, aot_metrics = compiled(setup.create_state(), batch, key)
    jit_state, jit_metrics = setup.step(setup.create_state(), batch, key)
    assert int(aot_state.step) == int(jit_state.step) == 1
    for a, b in zip(
        jax.tree.leaves((aot_state, aot_metrics)),
        jax.tree.leaves((jit_state, jit_metrics)),
        strict=True,
    ):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6, rtol=0)
    moved = np.abs(
        np.asarray(jit_state.params["Dense_0"]["kernel"]) - initial.params["Dense_0"]["kernel"]
    )
    assert moved.max() > 1e-4  # the step really updated the parameters
    assert aot_state.params["Dense_0"]["kernel"].sharding.spec == P("fsdp", None)


# Tiny MLP: Dense_0 kernel [EMBED=8, MLP=32], bias [MLP]; LayerNorm [NORM]; Dense_1 [MLP, EMBED].
SWAPPED = ((sharding.EMBED, sharding.TENSOR), (sharding.MLP, sharding.FSDP))


@pytest.mark.parametrize(
    "rules, expected",
    [
        (
            sharding.DEFAULT_RULES,
            {
                ("Dense_0", "kernel"): P("fsdp", "tensor"),
                ("Dense_0", "bias"): P("tensor"),
                ("LayerNorm_0", "scale"): P(None),
                ("Dense_1", "kernel"): P("tensor", "fsdp"),
                ("Dense_1", "bias"): P("fsdp"),
            },
        ),
        (
            SWAPPED,
            {
                ("Dense_0", "kernel"): P("tensor", "fsdp"),
                ("Dense_0", "bias"): P("fsdp"),
                ("LayerNorm_0", "scale"): P(None),
                ("Dense_1", "kernel"): P("fsdp", "tensor"),
                ("Dense_1", "bias"): P("tensor"),
            },
        ),
    ],
)
def test_state_is_created_sharded_as_the_rules_say(rules, expected):
    setup = build({"data": 2, "fsdp": 2, "tensor": 2}, rules=rules)
    state = setup.create_state()
    adam = state.opt_state[1][0]  # after the clipping in the chain
    for (module, name), spec in expected.items():
        for tree in (state.params, state.ema_params, adam.mu, adam.nu):
            leaf = tree[module][name]
            assert leaf.sharding.spec == spec, (module, name)
            shard = tuple(
                size // (setup.mesh.shape[axis] if axis else 1)
                for size, axis in zip(leaf.shape, spec, strict=False)
            )
            assert {s.data.shape for s in leaf.addressable_shards} == {shard}, (module, name)
    for scalar in (state.step, state.nonfinite_streak, adam.count):
        assert scalar.sharding.spec == P()
    abstract = setup.abstract_state()
    for real, shape in zip(jax.tree.leaves(state), jax.tree.leaves(abstract), strict=True):
        assert (shape.shape, shape.dtype) == (real.shape, real.dtype)
        assert shape.sharding.is_equivalent_to(real.sharding, real.ndim)


def test_bad_example_and_batch_are_named_before_tracing():
    one_row = {"x": jax.ShapeDtypeStruct((4, tiny_task.DIM), jnp.float32)}
    with pytest.raises(ValueError, match=r"example shapes must be \[1, \.\.\.\].*'x': \(4, 8\)"):
        build({"data": 2}, example=one_row)
    with pytest.raises(ValueError, match="global batch size 12 must be a multiple"):
        build({"data": 4, "fsdp": 2}, batch=12)
    with pytest.raises(ValueError, match="grad_accum_steps must be >= 1, got 0"):
        build({"data": 2}, accum=0)
