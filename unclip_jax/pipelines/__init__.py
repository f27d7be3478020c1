"""Text → image and the image operations of unCLIP, and DALL·E's sampler, over pipeline
directories: `from unclip_jax.pipelines import UnCLIP, Dalle` (imported on first use, so that the
light modules of this package load without JAX)."""

__all__ = ["Dalle", "UnCLIP"]


def __getattr__(name: str):
    if name == "UnCLIP":
        from unclip_jax.pipelines.unclip import UnCLIP

        return UnCLIP
    if name == "Dalle":
        from unclip_jax.pipelines.dalle import Dalle

        return Dalle
    raise AttributeError(f"module 'unclip_jax.pipelines' has no attribute {name!r}")
