"""Diffusion math: schedules, the Gaussian process, losses, samplers, guidance (jax.numpy only)."""
