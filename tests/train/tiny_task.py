"""A tiny regression task and a deterministic data iterator for the training-infrastructure tests.

Model: Dense(8→32) → LayerNorm → gelu → Dense(32→8) with logical axis names; data: x ~ N(0, 1),
y = sin(x @ W) for a fixed W; batch i is a pure function of (seed, i), split across processes.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from unclip_jax import sharding
from unclip_jax.train.task import Task

DIM = 8
HIDDEN = 32


def _dense(features: int, axes: tuple[str, str], dtype: jnp.dtype) -> nn.Dense:
    """A Dense layer whose kernel has logical axes `axes` (in, out) and its bias the out axis."""
    return nn.Dense(
        features,
        dtype=dtype,
        kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), axes),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, axes[1:]),
    )


class TinyMLP(nn.Module):
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = _dense(HIDDEN, (sharding.EMBED, sharding.MLP), self.dtype)(x)
        x = sharding.constrain(x, (sharding.BATCH, sharding.MLP))
        x = nn.LayerNorm(
            dtype=self.dtype,
            scale_init=nn.with_logical_partitioning(nn.initializers.ones, (sharding.NORM,)),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (sharding.NORM,)),
        )(x)
        x = nn.gelu(x)
        return _dense(DIM, (sharding.MLP, sharding.EMBED), self.dtype)(x)


class TinyTask(Task):
    """Mean squared error of TinyMLP on (x + small key-dependent noise) → y."""

    def __init__(self, noise: float = 0.01) -> None:
        self.model = TinyMLP()
        self.noise = noise

    def init(self, key, batch_spec):
        x = jnp.zeros(batch_spec["x"].shape, batch_spec["x"].dtype)
        return self.model.init(key, x)["params"]

    def loss(self, params, batch, key, train):
        x = batch["x"]
        if train and self.noise:
            x = x + self.noise * jax.random.normal(key, x.shape, x.dtype)
        pred = self.model.apply({"params": params}, x).astype(jnp.float32)
        loss = jnp.mean(jnp.square(pred - batch["y"]))
        return loss, {"abs_error": jnp.mean(jnp.abs(pred - batch["y"]))}

    def sample(self, params, key, num):
        x = jax.random.normal(key, (num * 16, DIM))
        pred = self.model.apply({"params": params}, x)
        return jnp.tanh(pred[:, :3]).reshape(num, 4, 4, 3)


class TinyIterator:
    """Host-local batches of a global batch `global_batch`; `poison` batch indices hold NaNs."""

    def __init__(self, global_batch, seed=0, process_index=0, process_count=1, poison=()):
        self.global_batch = global_batch
        self.seed = seed
        self.process_index = process_index
        self.process_count = process_count
        self.poison = frozenset(poison)
        self.index = 0
        self.w = np.random.default_rng(1234).normal(size=(DIM, DIM)).astype(np.float32)

    def global_batch_at(self, index):
        rng = np.random.default_rng([self.seed, index])
        x = rng.normal(size=(self.global_batch, DIM)).astype(np.float32)
        y = np.sin(x @ self.w).astype(np.float32)
        if index in self.poison:
            x[:] = np.nan
        return {"x": x, "y": y}

    def __iter__(self):
        return self

    def __next__(self):
        batch = self.global_batch_at(self.index)
        self.index += 1
        share = self.global_batch // self.process_count
        rows = slice(self.process_index * share, (self.process_index + 1) * share)
        return {k: v[rows] for k, v in batch.items()}

    def get_state(self):
        return {"index": self.index}

    def set_state(self, state):
        self.index = int(state["index"])
