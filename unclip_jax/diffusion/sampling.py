"""A compiled, guided sampling chain: one program per batch shape, reused for every key, guidance
scale, η and step count up to `max_steps`.

Arguments are checked on the host, before anything is traced or compiled.
"""

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from unclip_jax.diffusion import gaussian, guidance, samplers
from unclip_jax.diffusion.schedules import SCHEDULES, make_schedule

Array = jax.Array
# model_fn(params, x: [2B, …], t: [2B], conditioning) -> output [2B, …, C']
ParamModelFn = Callable[[Any, Array, Array, Any], Array]


@dataclasses.dataclass(frozen=True)
class SamplerSettings:
    schedule: str = "cosine"  # or "linear"
    num_train_steps: int = 1000
    sampler: str = "ddim"  # or "ddpm"
    max_steps: int = 1000  # step counts up to this share one compiled program
    mean_type: str = "eps"  # or "x0", "v"
    var_type: str = "fixed_small"  # or "fixed_large", "learned_range"
    clip: str = "static"  # or "none", "dynamic"
    clip_percentile: float = 0.995

    def __post_init__(self):
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {sorted(SCHEDULES)}, got {self.schedule!r}")
        if self.sampler not in samplers.SAMPLERS:
            raise ValueError(
                f"sampler must be one of {sorted(samplers.SAMPLERS)}, got {self.sampler!r}"
            )
        if not 0 < self.max_steps <= self.num_train_steps:
            raise ValueError(
                f"max_steps must be in [1, {self.num_train_steps}], got {self.max_steps}"
            )
        gaussian.check_prediction(self.mean_type)
        gaussian.check_variance(self.var_type)
        gaussian.check_clipping(self.clip)


class Sampler:
    """`sampler(params, cond, null_cond, shape, key, steps=..., guidance_scale=...)` → x0.

    conditioning / null_conditioning: pytrees with leading axis B = shape[0]; the model sees
    both halves as one batch of 2B per step. Returns x0: float32 `shape`.
    """

    def __init__(self, model_fn: ParamModelFn, settings: SamplerSettings):
        self.model_fn = model_fn
        self.settings = settings
        self._chain = jax.jit(self._run_chain, static_argnames=("shape",))

    def _run_chain(
        self, params, conditioning, null_conditioning, key, schedule, scale, eta, *, shape
    ):
        settings = self.settings
        noise_key, chain_key = jax.random.split(key)
        x_T = jax.random.normal(noise_key, shape, jnp.float32)
        model_fn = self.model_fn
        denoise = guidance.classifier_free_guidance(
            lambda x, t, c: model_fn(params, x, t, c),
            conditioning,
            null_conditioning,
            scale,
            mean_channels=shape[-1],
        )
        extra = {"eta": eta} if settings.sampler == "ddim" else {}
        return samplers.SAMPLERS[settings.sampler](
            denoise,
            schedule,
            x_T,
            chain_key,
            mean_type=settings.mean_type,
            var_type=settings.var_type,
            clip=settings.clip,
            clip_percentile=settings.clip_percentile,
            **extra,
        )

    def __call__(
        self,
        params: Any,
        conditioning: Any,
        null_conditioning: Any,
        shape: Sequence[int],
        key: Array,
        *,
        steps: str | int | Sequence[int] = 50,
        guidance_scale: float = 1.0,
        eta: float = 0.0,
    ) -> Array:
        guidance.check_guidance_scale(guidance_scale)
        if not eta >= 0:
            raise ValueError(f"eta must be >= 0, got {eta}")
        shape = tuple(int(d) for d in shape)
        for name, tree in (
            ("conditioning", conditioning),
            ("null_conditioning", null_conditioning),
        ):
            for leaf in jax.tree.leaves(tree):
                if leaf.shape[:1] != shape[:1]:
                    raise ValueError(
                        f"{name} leaves need leading axis {shape[0]} (the batch of shape "
                        f"{shape}), got a leaf of shape {leaf.shape}"
                    )
        settings = self.settings
        schedule = make_schedule(
            settings.schedule, settings.num_train_steps, steps, max_steps=settings.max_steps
        )
        return self._chain(
            params,
            conditioning,
            null_conditioning,
            key,
            schedule,
            jnp.float32(guidance_scale),
            jnp.float32(eta),
            shape=shape,
        )

    def compiled_programs(self) -> int:
        """How many programs the chain has been compiled into (1 after any number of calls with
        one shape)."""
        return self._chain._cache_size()
