"""The FLOP meter counts what runs inside its block: a scanned matmul's closed form per call,
sharded or not (per-device FLOPs times the devices), nothing outside the block, and no second
compile of the program it counts."""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from unclip_jax import flop_meter

LAYERS, BATCH, WIDTH = 6, 16, 64
MATMUL = 2 * BATCH * WIDTH * WIDTH


def scanned(w, x):
    """[L, W, W], [B, W] -> [B, W]: x through L matmuls."""
    return jax.lax.scan(lambda h, w_i: (h @ w_i, None), x, w)[0]


def test_a_metered_scan_counts_every_layer_of_every_call(caplog):
    fn = flop_meter.jit(scanned)
    w, x = jnp.ones((LAYERS, WIDTH, WIDTH)) / WIDTH, jnp.ones((BATCH, WIDTH))
    with jax.log_compiles(), caplog.at_level(logging.WARNING):
        with flop_meter.metering() as meter:
            first = fn(w, x)
            fn(w, x + 1)
        fn(w, x)  # outside the block: not counted
    assert meter.calls == 2 and meter.per_program == {"scanned": meter.flops}
    assert meter.flops == pytest.approx(2 * LAYERS * MATMUL, rel=0.01)
    np.testing.assert_allclose(first, scanned(w, x), rtol=1e-6)
    compiles = [m for m in caplog.messages if m.startswith("Finished XLA compilation of")]
    assert sum("jit(scanned)" in m for m in compiles) == 1, compiles


def test_a_sharded_program_counts_all_its_devices():
    mesh = jax.make_mesh((2,), ("data",))
    x = jax.device_put(jnp.ones((BATCH, WIDTH)), NamedSharding(mesh, P("data")))
    w = jnp.ones((LAYERS, WIDTH, WIDTH))
    with flop_meter.metering() as meter:
        flop_meter.jit(scanned)(w, x)
    assert meter.flops == pytest.approx(LAYERS * MATMUL, rel=0.01)
    text = jax.jit(scanned).lower(w, x).compile().as_text()
    assert flop_meter.program_devices(text) == 2
