"""Checks of the arguments of `UnCLIP` and the sampling commands, made before anything is
loaded or compiled, each error naming the bad value; and the batch buckets programs compile for."""

import contextlib
import dataclasses
import math
from collections.abc import Sequence
from typing import Any, TypedDict

import jax
import jax.numpy as jnp
import numpy as np

from unclip_jax.nn.precision import compute_dtype
from unclip_jax.text.tokenizer import check_utf8

Array = jax.Array


def check_steps(name: str, steps: int, maximum: int, minimum: int = 1) -> int:
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)):
        raise ValueError(f"{name} must be an integer number of steps, got {steps!r}")
    if not minimum <= steps <= maximum:
        raise ValueError(f"{name} must be in [{minimum}, {maximum}], got {steps}")
    return int(steps)


def stage_steps(name: str, settings: Any, steps: int | None) -> int:
    """Checked steps of a stage (its `sample_steps` when None) within its schedule's range."""
    return check_steps(
        name,
        settings.sample_steps if steps is None else steps,
        settings.train_steps,
        getattr(settings, "min_steps", 1),
    )


def check_count(name: str, value: int, least: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least:
        raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")
    return int(value)


def check_dtype(dtype: Any) -> str | None:
    """None (the dtypes saved), or the name of a compute dtype of `nn.precision` given by name
    ("bfloat16") or as a dtype (jnp.bfloat16); anything else is one error naming it."""
    if dtype is None:
        return None
    name = dtype
    if not isinstance(dtype, str):
        with contextlib.suppress(TypeError):
            name = jnp.dtype(dtype).name
    compute_dtype(name)
    return name


def check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    return int(seed)


def check_prompts(prompts: Sequence[str]) -> list[str]:
    if isinstance(prompts, str):
        prompts = [prompts]
    prompts = list(prompts)
    if not prompts:
        raise ValueError("prompts must hold at least one prompt (use '' for unconditional)")
    bad = [p for p in prompts if not isinstance(p, str)]
    if bad:
        raise ValueError(f"prompts must be strings, got {type(bad[0]).__name__}: {bad[0]!r}")
    check_utf8(prompts, "prompt")
    return prompts


def bucket_size(rows: int, multiple: int) -> int:
    """The padded batch for `rows`: a power of two, rounded up to a multiple of `multiple`."""
    size = 1 << max(0, math.ceil(math.log2(max(rows, 1))))
    return -(-size // multiple) * multiple


@dataclasses.dataclass(frozen=True)
class RunSettings:
    """Settings of one run of the stages over a set of rows."""

    key: Array  # base key of the call
    prior_steps: int
    prior_candidates: int
    decoder_steps: int
    decoder_guidance: float
    eta: float
    upsampler_steps: tuple[int, ...]  # one per upsampler run; () stops after the decoder
    score: bool


class DecoderOptions(TypedDict, total=False):
    """Settings of the decoder and the upsamplers for one call; absent or None: the stages'."""

    decoder_steps: int | None
    upsampler_steps: int | Sequence[int] | None  # one for all upsamplers, or one each
    decoder_guidance: float | None  # >= 0 (1 = the conditional model)


class ImageOptions(DecoderOptions, total=False):
    """`DecoderOptions` of the image operations (§3), and where they stop."""

    upsample: bool  # False: stop after the decoder, images at its resolution (default True)


X_T_SOURCES = ("inverted", "random")  # where an image operation's decoder x_T comes from


def check_x_T(x_T: str) -> str:
    """A checked x_T source: "inverted" (the images' DDIM inversions) or "random" (a draw)."""
    if x_T not in X_T_SOURCES:
        raise ValueError(f"x_T must be one of {list(X_T_SOURCES)}, got {x_T!r}")
    return x_T


class GenerateOptions(DecoderOptions, total=False):
    """`DecoderOptions` and the prior's, and the final images' CLIP reranking."""

    prior_steps: int | None
    prior_guidance: float | None
    prior_candidates: int | None  # z_i samples per image, the largest z_i·z_t kept (§2.1)
    rerank_candidates: int  # final images per image, the largest CLIP score kept
