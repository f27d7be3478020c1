"""Noise schedules β_t and respacing to a subset of timesteps.

Linear (Ho et al. 2020, scaled to T as in ADM) and cosine (Nichol & Dhariwal 2021, eq. 17).
Respacing keeps timesteps τ_1 < … < τ_S of a T-step process and defines the S-step process with
the same ᾱ at the kept steps: β'_k = 1 − ᾱ_{τ_k} / ᾱ_{τ_{k−1}} (Nichol & Dhariwal 2021, §4).

Tables are computed in float64 NumPy on the host and handed to compiled code as a `Schedule` of
float32 arrays padded to a fixed length, so a new step count does not recompile a sampler.
"""

import math
import re
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct


def linear_betas(num_steps: int) -> np.ndarray:
    """ADM's linear schedule: β from 1e-4 to 0.02 at T = 1000, scaled by 1000 / T."""
    scale = 1000.0 / num_steps
    return np.linspace(scale * 1e-4, scale * 0.02, num_steps, dtype=np.float64)


def cosine_betas(num_steps: int, offset: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
    """ᾱ(t) = cos²((t/T + s)/(1 + s) · π/2), β_t = min(1 − ᾱ(t+1)/ᾱ(t), max_beta)."""

    def alpha_bar(t):
        return math.cos((t / num_steps + offset) / (1 + offset) * math.pi / 2) ** 2

    return np.array(
        [min(1 - alpha_bar(t + 1) / alpha_bar(t), max_beta) for t in range(num_steps)],
        dtype=np.float64,
    )


SCHEDULES: dict[str, Callable[[int], np.ndarray]] = {
    "linear": linear_betas,
    "cosine": cosine_betas,
}


def make_betas(name: str, num_steps: int) -> np.ndarray:
    """β_t, t = 0 … T−1, of the named schedule. betas: [T] float64."""
    if name not in SCHEDULES:
        raise ValueError(f"schedule must be one of {sorted(SCHEDULES)}, got {name!r}")
    if not isinstance(num_steps, int | np.integer) or num_steps <= 0:
        raise ValueError(f"number of diffusion steps must be a positive integer, got {num_steps!r}")
    betas = SCHEDULES[name](int(num_steps))
    if not np.all((betas > 0) & (betas < 1)):
        raise ValueError(
            f"the {name} schedule with {num_steps} steps has β outside (0, 1): "
            f"max β = {betas.max():.3g}; use more steps"
        )
    return betas


def _even_section(size: int, count: int) -> list[int]:
    """`count` indices spread evenly over range(size), first and last included."""
    if count > size:
        raise ValueError(f"cannot take {count} steps from a section of {size} timesteps")
    if count == 1:
        return [0]
    stride = (size - 1) / (count - 1)
    return [round(k * stride) for k in range(count)]


def space_timesteps(num_steps: int, spacing: str | int | Sequence[int]) -> np.ndarray:
    """The kept timesteps, ascending, int64 [S].

    spacing:
      * an int or digits `"27"`: that many steps spread evenly over [0, T−1];
      * `"ddimN"`: every k-th timestep from 0, with k such that exactly N are taken (DDIM's rule);
      * comma-separated section counts `"10,10,5"`: T split into equal sections, each spread evenly;
      * a sequence of timesteps, e.g. Karlo's `round(arange(N)·999/(N−1))`.
    """
    if num_steps <= 0:
        raise ValueError(f"number of diffusion steps must be positive, got {num_steps}")
    if isinstance(spacing, int | np.integer):
        spacing = str(int(spacing))
    if isinstance(spacing, str):
        spec = spacing.strip()
        if match := re.fullmatch(r"ddim(-?\d+)", spec):
            count = int(match.group(1))
            _check_count(count, num_steps, spacing)
            for stride in range(1, num_steps + 1):
                if len(range(0, num_steps, stride)) == count:
                    return np.arange(0, num_steps, stride, dtype=np.int64)
            raise ValueError(
                f"spacing {spacing!r}: no integer stride takes exactly {count} of {num_steps} steps"
            )
        if not re.fullmatch(r"-?\d+(\s*,\s*-?\d+)*", spec):
            raise ValueError(
                f"spacing must be an int, 'ddimN', section counts like '10,10,5', or a list of "
                f"timesteps; got {spacing!r}"
            )
        counts = [int(c) for c in spec.split(",")]
        for count in counts:
            _check_count(count, num_steps, spacing)
        section, extra = divmod(num_steps, len(counts))
        kept, start = [], 0
        for k, count in enumerate(counts):
            size = section + (1 if k < extra else 0)
            kept += [start + offset for offset in _even_section(size, count)]
            start += size
        return np.asarray(sorted(set(kept)), dtype=np.int64)
    kept = np.asarray(list(spacing), dtype=np.int64)
    if kept.ndim != 1 or kept.size == 0:
        raise ValueError(f"explicit timesteps must be a non-empty list, got {spacing!r}")
    if kept.min() < 0 or kept.max() >= num_steps:
        raise ValueError(f"explicit timesteps must lie in [0, {num_steps - 1}], got {spacing!r}")
    if len(set(kept.tolist())) != kept.size:
        raise ValueError(f"explicit timesteps must be distinct, got {spacing!r}")
    return np.sort(kept)


def _check_count(count: int, num_steps: int, spacing) -> None:
    if count <= 0 or count > num_steps:
        raise ValueError(
            f"spacing {spacing!r}: step count must be in [1, {num_steps}], got {count}"
        )


def respaced_betas(betas: np.ndarray, kept: np.ndarray) -> np.ndarray:
    """β' of the process over `kept` timesteps, with ᾱ'_k = ᾱ_{kept[k]}. [S] float64."""
    alphas_cumprod = np.cumprod(1.0 - betas)
    previous = np.concatenate([[1.0], alphas_cumprod[kept][:-1]])
    return 1.0 - alphas_cumprod[kept] / previous


@struct.dataclass
class Schedule:
    """Tables of a (respaced) diffusion process, float32, padded to a fixed length N ≥ S.

    Index i ∈ [0, num_steps) addresses the process; `timesteps[i]` is the original timestep the
    model is conditioned on. Entries at i ≥ num_steps are padding and never read.
    """

    betas: jax.Array  # [N]
    alphas_cumprod: jax.Array  # [N] ᾱ_i
    alphas_cumprod_prev: jax.Array  # [N] ᾱ_{i−1}, with ᾱ_{−1} = 1
    sqrt_alphas_cumprod: jax.Array  # [N]
    sqrt_one_minus_alphas_cumprod: jax.Array  # [N]
    sqrt_recip_alphas_cumprod: jax.Array  # [N] 1/√ᾱ
    sqrt_recipm1_alphas_cumprod: jax.Array  # [N] √(1/ᾱ − 1)
    posterior_variance: jax.Array  # [N] β̃_i = β_i (1 − ᾱ_{i−1}) / (1 − ᾱ_i)
    posterior_log_variance_clipped: jax.Array  # [N] log β̃ with β̃_0 := β̃_1
    posterior_mean_coef1: jax.Array  # [N] coefficient of x0 in μ̃
    posterior_mean_coef2: jax.Array  # [N] coefficient of x_t in μ̃
    log_betas: jax.Array  # [N]
    large_log_variance: jax.Array  # [N] log β_i, with β̃_1 at i = 0 (keeps the last step finite)
    timesteps: jax.Array  # [N] int32, original timestep of index i
    num_steps: jax.Array  # [] int32, S
    # [N] E Var(x0 | x_i)/d implied by a model's Γ table, for var_type="analytic"; else None.
    x0_variance: jax.Array | None = None

    @property
    def max_steps(self) -> int:
        return self.betas.shape[0]


def implied_x0_variance(
    alphas_cumprod: np.ndarray, eps_sq_norm: np.ndarray, data_variance: float | None = None
) -> np.ndarray:
    """E Var(x0 | x_t)/d = β̄_t (1 − Γ_t)/ᾱ_t, the mean posterior variance of x0 that a model's
    Γ_t = E‖ε_θ(x_t, t)‖²/d implies (Tweedie: E‖E[ε | x_t]‖²/d = 1 − ᾱ_t E Var(x0 | x_t)/(β̄_t d)),
    clipped to Analytic-DPM's bounds (Bao et al. 2022, Theorem 2: 0 ≤ 1 − Γ ≤ 1) and, given the
    data's mean per-dimension variance, to it (E Var(x0 | x_t) ≤ Var(x0)): where ᾱ_t → 0 a Monte
    Carlo Γ cannot resolve 1 − Γ and only that bound keeps the variance finite. [S] float64.
    """
    alphas_cumprod = np.asarray(alphas_cumprod, np.float64)
    ratio = (1.0 - alphas_cumprod) / alphas_cumprod
    upper = ratio if data_variance is None else np.minimum(ratio, data_variance)
    return np.clip(ratio * (1.0 - np.asarray(eps_sq_norm, np.float64)), 0.0, upper)


def build_schedule(
    betas: np.ndarray,
    timesteps: np.ndarray | None = None,
    max_steps: int | None = None,
    x0_variance: np.ndarray | None = None,
) -> Schedule:
    """A `Schedule` from β (float64 [S]); `timesteps` default to 0 … S−1; padded to `max_steps`;
    `x0_variance` [S] (`implied_x0_variance` at the kept timesteps) for the analytic variance."""
    betas = np.asarray(betas, dtype=np.float64)
    steps = betas.shape[0]
    timesteps = np.arange(steps) if timesteps is None else np.asarray(timesteps)
    max_steps = steps if max_steps is None else max_steps
    if max_steps < steps:
        raise ValueError(f"{steps} sampling steps exceed the configured maximum of {max_steps}")
    alphas_cumprod = np.cumprod(1.0 - betas)
    alphas_cumprod_prev = np.concatenate([[1.0], alphas_cumprod[:-1]])
    posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)
    clipped = np.concatenate([posterior_variance[1:2], posterior_variance[1:]])
    large = np.concatenate([posterior_variance[1:2], betas[1:]])
    if steps == 1:
        clipped = np.maximum(posterior_variance, 1e-20)
        large = betas
    tables = dict(
        betas=betas,
        alphas_cumprod=alphas_cumprod,
        alphas_cumprod_prev=alphas_cumprod_prev,
        sqrt_alphas_cumprod=np.sqrt(alphas_cumprod),
        sqrt_one_minus_alphas_cumprod=np.sqrt(1.0 - alphas_cumprod),
        sqrt_recip_alphas_cumprod=np.sqrt(1.0 / alphas_cumprod),
        sqrt_recipm1_alphas_cumprod=np.sqrt(1.0 / alphas_cumprod - 1.0),
        posterior_variance=posterior_variance,
        posterior_log_variance_clipped=np.log(clipped),
        posterior_mean_coef1=betas * np.sqrt(alphas_cumprod_prev) / (1.0 - alphas_cumprod),
        posterior_mean_coef2=(1.0 - alphas_cumprod_prev)
        * np.sqrt(1.0 - betas)
        / (1.0 - alphas_cumprod),
        log_betas=np.log(betas),
        large_log_variance=np.log(large),
    )
    pad = max_steps - steps
    arrays = {
        name: jnp.asarray(np.pad(table, (0, pad), mode="edge"), dtype=jnp.float32)
        for name, table in tables.items()
    }
    if x0_variance is not None:
        x0_variance = jnp.asarray(np.pad(x0_variance, (0, pad), mode="edge"), dtype=jnp.float32)
    return Schedule(
        **arrays,
        timesteps=jnp.asarray(np.pad(timesteps, (0, pad), mode="edge"), dtype=jnp.int32),
        num_steps=jnp.asarray(steps, dtype=jnp.int32),
        x0_variance=x0_variance,
    )


def make_schedule(
    name: str,
    num_train_steps: int,
    spacing: str | int | Sequence[int] | None = None,
    max_steps: int | None = None,
    eps_sq_norm: np.ndarray | None = None,
    data_variance: float | None = None,
) -> Schedule:
    """The named schedule of `num_train_steps`, respaced by `spacing` (None: all steps).

    `max_steps` pads the tables so that every step count up to it shares one compiled sampler.
    `eps_sq_norm` [T], a model's Γ per training timestep (with `data_variance`, see
    `implied_x0_variance`), fills `x0_variance` at the kept timesteps for var_type="analytic".
    """
    betas = make_betas(name, num_train_steps)
    kept = (
        np.arange(num_train_steps) if spacing is None else space_timesteps(num_train_steps, spacing)
    )
    x0_variance = None
    if eps_sq_norm is not None:
        eps_sq_norm = np.asarray(eps_sq_norm, np.float64)
        if eps_sq_norm.shape != (num_train_steps,):
            raise ValueError(
                f"eps_sq_norm must hold one Γ per training timestep, [{num_train_steps}], got "
                f"shape {eps_sq_norm.shape}"
            )
        alphas_cumprod = np.cumprod(1.0 - betas)[kept]
        x0_variance = implied_x0_variance(alphas_cumprod, eps_sq_norm[kept], data_variance)
    if spacing is None:
        return build_schedule(betas, max_steps=max_steps, x0_variance=x0_variance)
    return build_schedule(
        respaced_betas(betas, kept), timesteps=kept, max_steps=max_steps, x0_variance=x0_variance
    )
