"""Batches of images (and their tokenized captions) for the decoder and upsampler trainers, and
the fixed held-out batches their evaluation and sample grids are drawn from."""

from collections.abc import Callable, Sequence

import numpy as np

from unclip_jax.data import input_pipeline, preprocess


def image_batches(
    source: Sequence,
    *,
    batch_size: int,
    image_size: int,
    seed: int,
    tokenize: Callable | None = None,
    **kwargs,
) -> input_pipeline.DataIterator:
    """Checkpointable host-local batches of `image` [B, S, S, 3] (S = `image_size`, the
    resolution the conditioning is computed at) and, with `tokenize`, `tokens` and `mask`."""

    def batch_fn(batch: dict) -> dict:
        out = {"image": np.asarray(batch["image"], np.float32)}
        if tokenize is not None:
            out["tokens"], out["mask"] = tokenize([str(c) for c in batch["caption"]])
        return out

    return input_pipeline.DataIterator(
        source,
        batch_size=batch_size,
        seed=seed,
        example_fn=preprocess.ImageTextExample(
            image_size=image_size, resize_size=image_size, random_crop=False
        ),
        batch_fn=batch_fn,
        **kwargs,
    )


def held_out_batches(source: Sequence, *, batch_size: int, count: int, **kwargs) -> list[dict]:
    """The first `count` batches of `source` in order (no shuffling), held in memory: a
    trainer's evaluation set and the images of its sample grids; `kwargs` as `image_batches`'.
    A source of fewer images than that is passed over again (its images repeat)."""
    if len(source) == 0:
        raise ValueError("the held-out split has no images; hold out some (validation_fraction)")
    passes = -(-batch_size * count // len(source))
    batches = image_batches(
        source, batch_size=batch_size, shuffle=False, num_epochs=passes, **kwargs
    )
    return fixed_batches(batches, count)


def first_rows(batches: list[dict], key: str, count: int) -> np.ndarray:
    """The first `count` rows of `key` over `batches`, in order."""
    return np.concatenate([batch[key] for batch in batches])[:count]


def fixed_batches(iterator: input_pipeline.DataIterator, count: int) -> list[dict]:
    """The first `count` batches of a finite iterator, held in memory."""
    batches = []
    for batch in iterator:
        batches.append(batch)
        if len(batches) == count:
            break
    iterator.close()
    return batches
