"""Karlo's sampling rule (diffusers' `UnCLIPScheduler`) expressed through our diffusion core.

Karlo runs ancestral DDPM steps on the cosine schedule of T = 1000 steps, respaced to the
timesteps round(k·(T−1)/(N−1)), k = 0 … N−1, with β recomputed between kept timesteps
(β'_k = 1 − ᾱ_{τ_k}/ᾱ_{τ_{k−1}}, our `respaced_betas`). Its variance types map onto ours:
"fixed_small_log" is the posterior variance β̃ ("fixed_small"), "learned_range" interpolates
log β̃ and log β' ("learned_range"); "epsilon" / "sample" predictions are our "eps" / "x0". The
predicted x0 is clipped to ±`clip_range`: ±1 is our "static" clipping; with x0 prediction other
ranges (Karlo's prior) clip the model output before the core sees it (`clip_output`), which is the
same clipping. ε prediction with another range is refused: going through ε and back loses float32
precision where ᾱ is small.

    config = json.loads(pathlib.Path("prior_scheduler/scheduler_config.json").read_text())
    scheduler = KarloScheduler.from_diffusers(config)
    x0 = scheduler.sample(denoise, 25, x_T, key)  # denoise(x_t, t) -> model output
"""

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from unclip_jax.diffusion import gaussian, samplers
from unclip_jax.diffusion.samplers import DenoiseFn
from unclip_jax.diffusion.schedules import (
    Schedule,
    build_schedule,
    cosine_betas,
    respaced_betas,
    space_timesteps,
)

Array = jax.Array

# diffusers' names -> ours.
VARIANCE_TYPES: dict[str, str] = {
    "fixed_small_log": "fixed_small",
    "learned_range": "learned_range",
}
PREDICTION_TYPES: dict[str, str] = {"epsilon": "eps", "sample": "x0"}
BETA_SCHEDULES: tuple[str, ...] = ("squaredcos_cap_v2",)  # Karlo's cosine, β capped at 0.999


def karlo_timesteps(num_train_steps: int, num_steps: int) -> np.ndarray:
    """Karlo's kept timesteps round(k·(T−1)/(N−1)), ascending (round half to even). [N] int64."""
    if not isinstance(num_steps, int | np.integer) or num_steps < 2:
        raise ValueError(f"Karlo's timesteps need an integer step count >= 2, got {num_steps!r}")
    if num_steps > num_train_steps:
        raise ValueError(f"step count must be <= {num_train_steps} (T), got {num_steps}")
    ratio = (num_train_steps - 1) / (num_steps - 1)
    return np.round(np.arange(num_steps) * ratio).astype(np.int64)


@dataclasses.dataclass(frozen=True)
class KarloScheduler:
    """One stage's sampling settings, as `UnCLIPScheduler`'s config sets them."""

    num_train_steps: int = 1000
    mean_type: str = "eps"  # or "x0"
    var_type: str = "fixed_small"  # or "learned_range"
    clip_range: float | None = 1.0  # |x0| bound; None: no clipping

    def __post_init__(self):
        if self.mean_type not in PREDICTION_TYPES.values():
            raise ValueError(
                f"mean_type must be one of {sorted(PREDICTION_TYPES.values())}, "
                f"got {self.mean_type!r}"
            )
        if self.var_type not in VARIANCE_TYPES.values():
            raise ValueError(
                f"var_type must be one of {sorted(VARIANCE_TYPES.values())}, got {self.var_type!r}"
            )
        if self.clip_range is not None and not self.clip_range > 0:
            raise ValueError(f"clip_range must be > 0 or None, got {self.clip_range}")
        if self.mean_type == "eps" and self.clip_range not in (None, 1.0):
            raise ValueError(
                f"clip_range {self.clip_range} needs x0 prediction; ε predictions clip x0 to "
                "±1 (the core's static clipping) or not at all"
            )
        if self.num_train_steps < 2:
            raise ValueError(f"num_train_steps must be >= 2, got {self.num_train_steps}")

    @classmethod
    def from_diffusers(cls, config: Mapping[str, Any]) -> "KarloScheduler":
        """From an `UnCLIPScheduler` config dict (diffusers' defaults for absent fields)."""
        beta_schedule = config.get("beta_schedule", BETA_SCHEDULES[0])
        if beta_schedule not in BETA_SCHEDULES:
            raise ValueError(
                f"beta_schedule must be one of {BETA_SCHEDULES}, got {beta_schedule!r}"
            )
        variance = config.get("variance_type", "fixed_small_log")
        if variance not in VARIANCE_TYPES:
            raise ValueError(
                f"variance_type must be one of {sorted(VARIANCE_TYPES)}, got {variance!r}"
            )
        prediction = config.get("prediction_type", "epsilon")
        if prediction not in PREDICTION_TYPES:
            raise ValueError(
                f"prediction_type must be one of {sorted(PREDICTION_TYPES)}, got {prediction!r}"
            )
        clip = config.get("clip_sample", True)
        return cls(
            num_train_steps=int(config.get("num_train_timesteps", 1000)),
            mean_type=PREDICTION_TYPES[prediction],
            var_type=VARIANCE_TYPES[variance],
            clip_range=float(config.get("clip_sample_range", 1.0)) if clip else None,
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "KarloScheduler":
        return cls(**d)

    def timesteps(self, num_steps: int) -> np.ndarray:
        return karlo_timesteps(self.num_train_steps, num_steps)

    def schedule(self, num_steps: int, max_steps: int | None = None) -> Schedule:
        """The respaced process over Karlo's timesteps; `max_steps` pads it (one compile)."""
        kept = space_timesteps(self.num_train_steps, self.timesteps(num_steps))
        betas = respaced_betas(cosine_betas(self.num_train_steps), kept)
        return build_schedule(betas, timesteps=kept, max_steps=max_steps)

    @property
    def _core_clip(self) -> str:
        return {None: "none", 1.0: "static"}.get(self.clip_range, "none")

    def sampler_kwargs(self) -> dict[str, str]:
        """mean_type, var_type and clip for `samplers.ddpm_sample` / `gaussian.p_mean_variance`."""
        return dict(mean_type=self.mean_type, var_type=self.var_type, clip=self._core_clip)

    def clip_output(self, model_output: Array, x_t: Array, t: Array) -> Array:
        """The x0 prediction clipped to ±clip_range where the core's clipping does not do it.

        model_output: [B, …, C'], x_t: [B, …, C], t: [B] (unused; the `denoise` signature).
        """
        del t
        if self.clip_range is None or self._core_clip == "static":
            return model_output
        channels = x_t.shape[-1]
        bound = jnp.asarray(self.clip_range, model_output.dtype)
        mean = jnp.clip(model_output[..., :channels], -bound, bound)
        return jnp.concatenate([mean, model_output[..., channels:]], axis=-1)

    def wrap(self, denoise: DenoiseFn) -> DenoiseFn:
        """`denoise(x, t)` whose output goes through `clip_output`."""
        return lambda x, t: self.clip_output(denoise(x, t), x, t)

    def sample(
        self,
        denoise: DenoiseFn,
        steps: int,
        x_T: Array,
        key: Array | None = None,
        *,
        noise: Array | None = None,
        max_steps: int | None = None,
    ) -> Array:
        """Karlo's ancestral chain over its `steps` timesteps: x_T [B, …] → x0 [B, …].

        Per-step noise from `key`, or `noise` [S, B, …] indexed by schedule index (index 0, the
        last step, takes none).
        """
        return samplers.ddpm_sample(
            self.wrap(denoise),
            self.schedule(steps, max_steps),
            x_T,
            key,
            noise=noise,
            **self.sampler_kwargs(),
        )

    def step(
        self, schedule: Schedule, model_output: Array, x_t: Array, index: Array, t: Array
    ) -> gaussian.ReverseStep:
        """The reverse step at schedule index `index` [B] (timestep t [B]): what
        `UnCLIPScheduler.step` computes before adding noise (samplers add none at index 0)."""
        return gaussian.p_mean_variance(
            schedule,
            self.clip_output(model_output, x_t, t),
            x_t,
            index,
            gaussian.ReverseOptions(**self.sampler_kwargs()),
        )
