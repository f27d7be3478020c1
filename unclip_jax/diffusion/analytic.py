"""Analytic-DPM's statistics of a trained model (Bao et al. 2022, eq. 8): Γ_t, the mean squared
ε prediction per dimension E_q ‖ε_θ(x_t, t)‖²/d at each TRAINING timestep, estimated by Monte
Carlo over data, with the data's variance that bounds it. `make_schedule(..., eps_sq_norm=Γ)`
reads Γ at a chain's kept timesteps, so one table serves every respacing (var_type="analytic").
"""

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from unclip_jax.diffusion import gaussian
from unclip_jax.diffusion.schedules import Schedule

Array = jax.Array
TABLE_FILE = "analytic_variance.json"  # `AnalyticTable.to_dict()`, in a trained stage's workdir


@dataclasses.dataclass(frozen=True)
class AnalyticTable:
    """What the analytic variance needs of a model: Γ per training timestep, and the data's mean
    per-dimension variance (E Var(x0 | x_t) ≤ Var(x0) bounds the variance where Γ cannot)."""

    eps_sq_norm: np.ndarray  # [T] float64, Γ_t
    data_variance: float  # mean over dimensions of Var(x0)
    examples: int  # rows of data Γ was averaged over, per timestep

    def __post_init__(self):
        table = np.asarray(self.eps_sq_norm, np.float64)
        if table.ndim != 1 or not np.isfinite(table).all() or (table < 0).any():
            bad = int((~np.isfinite(table)).sum() + (table < 0).sum())
            raise ValueError(
                f"eps_sq_norm must be [T] finite values >= 0, got shape {table.shape} with "
                f"{bad} bad values"
            )
        if not (math.isfinite(self.data_variance) and self.data_variance > 0):
            raise ValueError(f"data_variance must be finite and > 0, got {self.data_variance}")
        object.__setattr__(self, "eps_sq_norm", table)

    @property
    def train_steps(self) -> int:
        return self.eps_sq_norm.shape[0]

    def to_dict(self) -> dict[str, Any]:
        return {
            "eps_sq_norm": self.eps_sq_norm.tolist(),
            "data_variance": float(self.data_variance),
            "examples": int(self.examples),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "AnalyticTable":
        return cls(
            np.asarray(d["eps_sq_norm"], np.float64), float(d["data_variance"]), int(d["examples"])
        )

    @classmethod
    def mean(cls, tables: list[tuple[Array, Array]], rows: int) -> "AnalyticTable":
        """The table from `estimate`'s outputs over equal batches of `rows` rows each."""
        if not tables:
            raise ValueError("no batch to estimate Γ from")
        eps = np.mean([np.asarray(e, np.float64) for e, _ in tables], axis=0)
        variance = float(np.mean([float(v) for _, v in tables]))
        return cls(eps, variance, rows * len(tables))


def estimate(
    denoise: Callable[[Array, Array], Array],
    schedule: Schedule,
    x0: Array,
    key: Array,
    *,
    mean_type: str = "eps",  # or "x0", "v": converted to ε
    var_type: str = "fixed_small",  # "learned_range": the variance channels are dropped
    timesteps_per_call: int | None = None,  # vmap this many timesteps into one model call
) -> tuple[Array, Array]:
    """(Γ_i for every index i of `schedule` [N], the rows' mean per-dimension variance []).

    `schedule` is the TRAINING schedule (not respaced); every row of x0 [B, …] is noised to each
    timestep with fresh noise (fold_in(key, i)). `denoise(x_t [B, …], t [B]) -> model output` as
    the samplers take it; a conditional model closes over the rows' own conditioning (unguided:
    Γ is the model's). Under `jax.jit` the table is one program, one model call per timestep.
    """
    gaussian.check_prediction(mean_type)
    gaussian.check_variance(var_type)
    x0 = jnp.asarray(x0, jnp.float32)

    def at(index: Array) -> Array:
        batch_index = jnp.full(x0.shape[:1], index, jnp.int32)
        noise = jax.random.normal(jax.random.fold_in(key, index), x0.shape, jnp.float32)
        x_t = gaussian.q_sample(schedule, x0, batch_index, noise)
        output = denoise(x_t, schedule.timesteps[batch_index])
        mean_output, _ = gaussian.split_output(output, x_t, var_type)
        eps = gaussian.predicted_eps(schedule, x_t, batch_index, mean_output, mean_type)
        return jnp.mean(jnp.square(eps))

    indices = jnp.arange(schedule.max_steps, dtype=jnp.int32)
    eps_sq_norm = jax.lax.map(at, indices, batch_size=timesteps_per_call)
    data_variance = jnp.mean(jnp.var(x0.reshape(x0.shape[0], -1), axis=0))
    return eps_sq_norm, data_variance
