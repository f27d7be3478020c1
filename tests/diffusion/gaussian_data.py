"""Data x0 ~ N(μ, diag σ²): the exact denoiser of every parameterisation, for closed-form tests."""

import jax.numpy as jnp
import numpy as np

from unclip_jax.diffusion.schedules import make_betas


class GaussianData:
    """E[x0 | x_t] = μ + √ᾱ σ² / (ᾱ σ² + 1 − ᾱ) · (x_t − √ᾱ μ), per dimension."""

    def __init__(self, schedule_name: str, num_train_steps: int, dim: int = 16, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.mu = rng.uniform(-1.0, 1.0, dim)
        self.sigma = rng.uniform(0.2, 1.0, dim)
        self.alphas_cumprod = np.cumprod(1.0 - make_betas(schedule_name, num_train_steps))

    def posterior_mean_x0(self, x_t, t):
        alpha_bar = jnp.asarray(self.alphas_cumprod, jnp.float32)[t][:, None]
        mu, var = jnp.asarray(self.mu, jnp.float32), jnp.asarray(self.sigma**2, jnp.float32)
        gain = jnp.sqrt(alpha_bar) * var / (alpha_bar * var + 1.0 - alpha_bar)
        return mu + gain * (x_t - jnp.sqrt(alpha_bar) * mu)

    def denoiser(self, mean_type: str):
        """denoise(x_t [B, d], t [B]) -> exact ε, x0 or v."""

        def denoise(x_t, t):
            x0 = self.posterior_mean_x0(x_t, t)
            alpha_bar = jnp.asarray(self.alphas_cumprod, jnp.float32)[t][:, None]
            eps = (x_t - jnp.sqrt(alpha_bar) * x0) / jnp.sqrt(1.0 - alpha_bar)
            return {
                "eps": eps,
                "x0": x0,
                "v": jnp.sqrt(alpha_bar) * eps - jnp.sqrt(1.0 - alpha_bar) * x0,
            }[mean_type]

        return denoise
