"""unclip_jax: hierarchical text-conditional image generation with CLIP latents, in JAX/Flax."""

__version__ = "0.1.0"
