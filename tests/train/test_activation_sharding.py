"""Activation sharding: a tiny decoder's train step on a data=2 × fsdp=2 × tensor=2 mesh equals
the one-device step, and its program carries the models' activation constraints (batch over
data × fsdp; heads and feature-map channels over tensor), which vanish outside the rules."""

import functools
import re

import jax
import numpy as np
import pytest
import task_helpers
from jax.sharding import PartitionSpec as P

from unclip_jax import sharding
from unclip_jax.diffusion.schedules import make_schedule
from unclip_jax.models.unet import Decoder, UNetConfig
from unclip_jax.train import decoder_task
from unclip_jax.train import optimizer as optimizer_lib
from unclip_jax.train import state as state_lib
from unclip_jax.train import step as step_lib

GLOBAL_BATCH, SIZE, EMBED_DIM = 8, 8, 16
# One level of 16 channels: 5 residual blocks and the middle attention block (2 heads of 8).
DECODER = Decoder(
    UNetConfig(
        out_channels=6,
        base_channels=16,
        channel_mults=(1,),
        num_res_blocks=1,
        attention_levels=(),
        head_dim=8,
        groups=4,
    ),
    context_dim=16,
    caption_source="none",
)
TASK = decoder_task.DecoderTask(DECODER, make_schedule("cosine", 100), SIZE)
# Adam's eps well above the float32 noise of the gradients: the update is then a smooth function
# of the gradient (with eps = 1e-8 a near-zero gradient's sign, i.e. its rounding, sets the update).
OPT = optimizer_lib.OptimizerConfig(
    peak_lr=1e-2, warmup_steps=0, schedule="constant", eps=1e-3, weight_decay=0.1
)
STEP = step_lib.StepConfig(ema_decay=0.9)
RULES = sharding.DEFAULT_RULES
FULL_MESH = {"data": 2, "fsdp": 2, "tensor": 2}


def batches(count: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    return [
        {
            "image": rng.uniform(-1, 1, (GLOBAL_BATCH, SIZE, SIZE, 3)).astype(np.float32),
            "image_embedding": rng.normal(size=(GLOBAL_BATCH, EMBED_DIM)).astype(np.float32),
        }
        for _ in range(count)
    ]


def init_fn(key: jax.Array) -> dict:
    """The task's boxed parameters with a random output convolution (zero-initialised in the
    model), so that the first step already sends gradients through every block."""
    params = TASK.init(key, task_helpers.batch_spec(batches(1)[0]))
    kernel = params["unet"]["conv_out"]["kernel"]
    noise = 0.1 * jax.random.normal(jax.random.fold_in(key, 1), kernel.value.shape)
    params["unet"]["conv_out"]["kernel"] = kernel.replace_boxed(noise)
    return params


def setup(mesh_shape: dict[str, int], devices: list) -> tuple:
    """(state, tx, mesh) for the decoder task on a mesh of `devices`."""
    mesh = sharding.make_mesh(mesh_shape, devices)
    mask = optimizer_lib.decay_mask(jax.eval_shape(init_fn, jax.random.key(0)))
    tx = optimizer_lib.make_optimizer(OPT, mask)
    state, shardings = state_lib.create_train_state(init_fn, tx, jax.random.key(0), mesh, RULES)
    return state, shardings, tx, mesh


def train(mesh_shape: dict[str, int], devices: list, steps: int = 2) -> tuple:
    """(initial params, state after `steps` steps, losses) on a mesh of `devices`."""
    state, shardings, tx, mesh = setup(mesh_shape, devices)
    initial = jax.device_get(state.params)
    data = batches(steps)
    step = step_lib.jit_train_step(
        TASK,
        tx,
        optimizer_lib.learning_rate_schedule(OPT),
        STEP,
        shardings,
        data[0],
        mesh,
        RULES,
    )
    losses = []
    for batch in data:
        state, metrics = step(state, step_lib.to_global(batch, mesh), jax.random.key(3))
        losses.append(float(metrics["loss"]))
    return initial, state, losses


def lowered_text(mesh_shape: dict[str, int], under_rules: bool) -> str:
    """The StableHLO of the train step on the 8-device mesh, traced with or without the rules;
    the state is abstract (shapes and shardings), so nothing is initialised or compiled."""
    mesh = sharding.make_mesh(mesh_shape, jax.devices())
    mask = optimizer_lib.decay_mask(jax.eval_shape(init_fn, jax.random.key(0)))
    tx = optimizer_lib.make_optimizer(OPT, mask)
    key = jax.random.key(0)
    shardings = state_lib.train_state_shardings(init_fn, tx, key, mesh, RULES)
    state = state_lib.abstract_train_state(init_fn, tx, key, shardings)
    fn = jax.jit(
        functools.partial(
            step_lib.train_step,
            task=TASK,
            tx=tx,
            schedule=optimizer_lib.learning_rate_schedule(OPT),
            config=STEP,
        )
    )
    args = (state, step_lib.to_global(batches(1)[0], mesh), jax.random.key(3))
    if not under_rules:
        return fn.lower(*args).as_text()
    with sharding.activation_rules(mesh, RULES):
        return fn.lower(*args).as_text()


def constraints(text: str) -> list[str]:
    """The dimension shardings of every `sdy.sharding_constraint`, e.g. `[{"data", "fsdp"}, {}]`."""
    return re.findall(r"sdy\.sharding_constraint %\S+ <@\w+, (\[.*?\])>", text)


@pytest.fixture(scope="module")
def one_device_run():
    return train({"data": 1}, jax.devices()[:1])


def test_mesh_2x2x2_step_equals_one_device_step(one_device_run):
    _, state, losses = train(FULL_MESH, jax.devices())
    initial, ref_state, ref_losses = one_device_run
    query = state.params["unet"]["mid_attn"]["attention"]["query"]["kernel"]
    assert query.sharding.spec == P("fsdp", "tensor", None)  # [D, H, Dh]
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    for tree, ref_tree in (
        (state.params, ref_state.params),
        (state.ema_params, ref_state.ema_params),
    ):
        for new, ref in zip(jax.tree.leaves(tree), jax.tree.leaves(ref_tree), strict=True):
            np.testing.assert_allclose(np.asarray(new), np.asarray(ref), atol=1e-5, rtol=0)
    moved = [
        np.abs(np.asarray(new) - old).max()
        for new, old in zip(
            jax.tree.leaves(ref_state.params), jax.tree.leaves(initial), strict=True
        )
    ]
    assert min(moved) > 1e-4  # every parameter really changed


def test_step_program_carries_activation_constraints_only_under_rules():
    found = constraints(lowered_text(FULL_MESH, under_rules=True))
    batch = '{"data", "fsdp"}'

    def count(*dims: str) -> int:
        return found.count("[" + ", ".join((batch, *dims)) + "]")

    # Forward and backward (the transpose of a constraint is a constraint): the outputs
    # [B, H, W, C] of 5 residual blocks and the attention block, and of every convolution (2 per
    # residual block, 2 skip convolutions, the first and the last), channels over tensor; its q,
    # k, v, extra k, extra v and attended values [B, L, H, Dh], heads over tensor; its output
    # and the conditioning tokens [B, L, D].
    assert count("{}", "{}", '{"tensor"}') == 2 * (6 + 10 + 2 + 2)
    assert count("{}", '{"tensor"}', "{}") == 2 * 6
    assert count("{}", "{}") == 2 * 2
    assert constraints(lowered_text(FULL_MESH, under_rules=False)) == []
