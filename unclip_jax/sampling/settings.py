"""How a diffusion stage was trained and how it is sampled by default: one settings type for the
decoder, the upsamplers and the prior, read from a training config's `diffusion` section or a
pipeline stage's `stage.json`, and checked once, when it is made."""

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

from unclip_jax.diffusion import gaussian, samplers
from unclip_jax.diffusion.analytic import AnalyticTable
from unclip_jax.diffusion.schedules import SCHEDULES, Schedule, make_schedule

FIXED_VARIANCES = ("fixed_small", "fixed_large", "analytic")  # DiffusionSettings.variance


@dataclasses.dataclass(frozen=True)
class DiffusionSettings:
    """A stage's diffusion process and its sampler; the names of the configs' `diffusion`."""

    schedule: str = "cosine"  # or "linear"
    train_steps: int = 1000
    sample_steps: int = 50  # the stage's default number of sampling steps
    prediction: str = "eps"  # or "x0", "v"
    learned_variance: bool = False  # the model also outputs Σ's interpolation (hybrid loss)
    # A fixed-variance model's step variance: or "fixed_large" (β), "analytic" (Analytic-DPM,
    # Bao et al. 2022: needs the stage's Γ table); a learned-variance model uses its own Σ.
    variance: str = "fixed_small"
    sampler: str = "ddim"  # or "ddpm" (ancestral steps, with the learned Σ where there is one)
    clip: str = "static"  # clipping of the predicted x0: or "none", "dynamic"
    max_steps: int | None = None  # step counts up to this share one program; None: train_steps

    def __post_init__(self):
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {sorted(SCHEDULES)}, got {self.schedule!r}")
        if self.sampler not in samplers.SAMPLERS:
            raise ValueError(
                f"sampler must be one of {sorted(samplers.SAMPLERS)}, got {self.sampler!r}"
            )
        if isinstance(self.train_steps, bool) or not self.train_steps >= 1:
            raise ValueError(f"train_steps must be an integer >= 1, got {self.train_steps!r}")
        if not 1 <= self.padded_steps <= self.train_steps:
            raise ValueError(f"max_steps must be in [1, {self.train_steps}], got {self.max_steps}")
        gaussian.check_prediction(self.prediction)
        gaussian.check_clipping(self.clip)
        if self.variance not in FIXED_VARIANCES:
            raise ValueError(f"variance must be one of {FIXED_VARIANCES}, got {self.variance!r}")
        if self.learned_variance and self.variance != "fixed_small":
            raise ValueError(
                f"variance {self.variance!r} is for fixed-variance models; this stage has "
                "learned_variance=True and samples with its learned Σ"
            )

    @classmethod
    def from_dict(cls, section: Mapping[str, Any]) -> "DiffusionSettings":
        """From a config's `diffusion` section or a `stage.json`'s; other keys are ignored."""
        if hasattr(section, "to_dict"):
            section = section.to_dict()
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in dict(section).items() if k in known})

    @property
    def var_type(self) -> str:
        """The `gaussian.VARIANCES` name the stage samples with."""
        return "learned_range" if self.learned_variance else self.variance

    @property
    def eta(self) -> float:
        """The stage's default η: DDPM's steps are as ancestral as DDIM's with η = 1."""
        return 1.0 if self.sampler == "ddpm" else 0.0

    @property
    def padded_steps(self) -> int:
        return self.train_steps if self.max_steps is None else int(self.max_steps)

    def output_channels(self, channels: int = 3) -> int:
        return gaussian.output_channels(channels, self.var_type)

    def schedule_for(
        self, steps: int | str | Any, analytic: AnalyticTable | None = None
    ) -> Schedule:
        """The schedule respaced to `steps`, padded to `padded_steps` (one program for all);
        with `analytic`, the model's Γ table, it holds the analytic variance's x0_variance."""
        if isinstance(steps, int) and not 1 <= steps <= self.padded_steps:
            raise ValueError(f"steps must be in [1, {self.padded_steps}], got {steps}")
        if analytic is not None and analytic.train_steps != self.train_steps:
            raise ValueError(
                f"the Γ table has {analytic.train_steps} entries; the stage has "
                f"train_steps={self.train_steps}"
            )
        return make_schedule(
            self.schedule,
            self.train_steps,
            steps,
            max_steps=self.padded_steps,
            eps_sq_norm=None if analytic is None else analytic.eps_sq_norm,
            data_variance=None if analytic is None else analytic.data_variance,
        )


def check_guidance_scale(scale: Any, name: str = "guidance_scale") -> float:
    """A finite number >= 0 (0: unconditional, 1: conditional, > 1: guided)."""
    try:
        value = float(scale) if not isinstance(scale, (bool, str)) else math.nan
    except (TypeError, ValueError):
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {scale!r}")
    return value


def check_eta(eta: Any) -> float:
    """DDIM's η: a finite number >= 0 (0 deterministic, 1 as ancestral as DDPM); the same check
    as a guidance scale's."""
    return check_guidance_scale(eta, "eta")
