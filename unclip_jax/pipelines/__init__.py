"""Text → image and the image operations of unCLIP over a pipeline directory:
`from unclip_jax.pipelines import UnCLIP` (imported on first use, so that the light modules of
this package load without JAX)."""

__all__ = ["UnCLIP"]


def __getattr__(name: str):
    if name == "UnCLIP":
        from unclip_jax.pipelines.unclip import UnCLIP

        return UnCLIP
    raise AttributeError(f"module 'unclip_jax.pipelines' has no attribute {name!r}")
