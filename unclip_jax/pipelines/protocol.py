"""What `UnCLIP` asks of its stages, written down: the stages of a pipeline directory
(`pipelines.stages`, the AR prior's `pipelines.ar_prior_stage`) and of a converted Karlo
checkpoint (`pipelines.karlo`) all implement it.

A stage that cannot do something does not have the method: a text encoder without an image
encoder is not an `ImageEncoder`, a decoder without an inversion is not an `InvertibleDecoder`,
and `UnCLIP` refuses the operations that need them before any compute. Every array argument
has a leading batch axis B; each method runs one compiled program per batch shape.
"""

from typing import Any, Protocol, runtime_checkable

import jax
import numpy as np

from unclip_jax.sampling.prior import EncodedCaption

Array = jax.Array


class StepCounts(Protocol):
    """A stage's sampling step range (`sampling.settings.DiffusionSettings`, Karlo's, or an AR
    prior's `CodeSteps`: its K codes, K steps exactly); the fewest is `min_steps` where given,
    else 1."""

    sample_steps: int  # the default
    train_steps: int  # the most
    eta: float  # the default η (1 for ancestral samplers)


@runtime_checkable
class TextEncoder(Protocol):
    params: Any

    @property
    def context_length(self) -> int: ...

    def tokenize(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """texts → (ids [B, L] int32, mask [B, L] bool)."""

    def encode_text(self, ids: Array, mask: Array) -> tuple[Array, Array]:
        """(z_t [B, P], token states [B, L, Dt])."""

    def compiled_programs(self) -> int: ...


@runtime_checkable
class ImageEncoder(Protocol):
    def encode_image(self, images: Array) -> Array:
        """images [B, H, W, 3] in [-1, 1] → z_i [B, P]."""


@runtime_checkable
class PriorStage(Protocol):
    """A prior: the diffusion prior (§2.2), Karlo's, or the autoregressive one (§2.1)."""

    params: Any
    diffusion: StepCounts  # the range of `steps` (an AR prior: its code count, fixed)
    default_guidance: float
    default_candidates: int
    accepts_fed_noise: bool  # takes `latents` / `noise` keywords to replay another chain

    def sample(
        self,
        key: Array,
        caption: EncodedCaption,
        steps: int,  # within `diffusion`'s range: denoising steps, or an AR prior's K codes
        scales: Array,  # [B] guidance scale per caption (0: unconditional)
        candidates: int,  # samples per caption, the one of largest z_i·z_t kept
        **fed: Array,
    ) -> Array:  # z_i [B, P]
        ...

    def compiled_programs(self) -> int: ...


@runtime_checkable
class DecoderStage(Protocol):
    params: Any
    diffusion: StepCounts
    default_guidance: float
    accepts_fed_noise: bool
    shape: tuple[int, int, int]  # (S, S, 3) of the images it samples

    def conditioning(
        self,
        image_embed: Array,
        caption: dict[str, Array],
        drop_caption: Array,
        drop_image: Array | None = None,
    ) -> dict[str, Array]:
        """The decoder's inputs from z_i [B, P] and the caption's ids/mask/states/text_embed;
        rows with `drop_caption` [B] see the null caption, rows with `drop_image` [B] the
        decoder's null image embedding in place of z_i (None: none does)."""

    def sample(
        self, x_T: Array, cond: dict, steps: int, scale: float, eta: float, key: Array, **fed
    ) -> Array:  # [B, S, S, 3] in [-1, 1]
        ...

    def compiled_programs(self) -> int: ...


@runtime_checkable
class InvertibleDecoder(DecoderStage, Protocol):
    def invert(self, x0: Array, cond: dict, steps: int) -> Array:
        """DDIM inversion: images [B, S, S, 3] → x_T."""


@runtime_checkable
class UpsamplerStage(Protocol):
    params: Any
    diffusion: StepCounts
    accepts_fed_noise: bool
    shape: tuple[int, int, int]  # (S, S, 3) of the images it samples

    def sample(
        self, x_T: Array, low_res: Array, steps: int, eta: float, key: Array, **fed
    ) -> Array:  # [B, H, W, 3] in [-1, 1]
        ...

    def compiled_programs(self) -> int: ...
