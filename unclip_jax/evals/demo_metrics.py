"""The demo's figures on the captioned shapes, read by the oracle (`shapes_oracle`).

- single-object accuracy: the image shows exactly one object, of the caption's colour
  (`colour`), and also of its shape (`colour_shape`);
- binding accuracy (two-object captions): both named objects present with the right colour and
  shape, no other object, the relation right (`shapes_oracle.score_caption(...).correct`);
  `binding_hits` leaves the relation out (each object with its own attributes);
- diversity: per caption, the entropy of the oracle-read (position region, size class) of the
  generated images divided by that of the data's images of the same caption description,
  averaged over captions (1 = as varied as the data, 0 = always the same layout).
"""

import math
from collections import Counter
from collections.abc import Sequence

import numpy as np

from unclip_jax.evals import shapes_oracle


def read_single(image: np.ndarray) -> shapes_oracle.ReadObject | None:
    """The one object of an image, or None when the oracle reads zero or several."""
    objects = shapes_oracle.read_objects(image)
    return objects[0] if len(objects) == 1 else None


def single_object_hits(images: np.ndarray, captions: Sequence[str]) -> dict[str, np.ndarray]:
    """{"colour", "colour_shape"}: per image [N] bool, whether the oracle reads exactly one
    object, of the single-object caption's colour (and shape)."""
    colour, colour_shape = [], []
    for image, caption in zip(images, captions, strict=True):
        named, _, _ = shapes_oracle.parse_caption(caption)
        if len(named) != 1:
            raise ValueError(f"caption {caption!r} does not name exactly one object")
        read = read_single(image)
        colour.append(read is not None and read.colour == named[0][0])
        colour_shape.append(colour[-1] and read.shape == named[0][1])
    return {"colour": np.array(colour, bool), "colour_shape": np.array(colour_shape, bool)}


def single_object_accuracy(images: np.ndarray, captions: Sequence[str]) -> dict[str, float]:
    """{"colour", "colour_shape"} fractions over single-object captions."""
    hits = single_object_hits(images, captions)
    return {name: float(np.mean(value)) for name, value in hits.items()}


def binding_hits(images: np.ndarray, captions: Sequence[str]) -> np.ndarray:
    """Per image [N] bool: the oracle reads every object the caption names, each with its own
    colour and shape, and no other object (the relation is not judged)."""
    if len(images) != len(captions):
        raise ValueError(f"need as many images as captions, got {len(images)} and {len(captions)}")
    scores = [shapes_oracle.score_caption(i, c) for i, c in zip(images, captions, strict=True)]
    return np.array(
        [
            s.objects_named > 0 and s.objects_matched == s.objects_named and not s.extra_objects
            for s in scores
        ],
        bool,
    )


def binding_accuracy(images: np.ndarray, captions: Sequence[str]) -> float:
    """Fraction of two-object captions whose image the oracle finds exactly right."""
    return shapes_oracle.caption_accuracy(np.asarray(images), list(captions))


def layout(image: np.ndarray, size_threshold: float) -> tuple[str, str] | None:
    """(region, "small"/"large") of an image's single object; size by its foreground area
    fraction against `size_threshold`."""
    read = read_single(image)
    if read is None:
        return None
    pixels = shapes_oracle.to_uint8_range(image)
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    background = np.median(border, axis=0)
    area = float(np.mean(np.linalg.norm(pixels - background, axis=-1) > 70.0))
    return read.region, "large" if area > size_threshold else "small"


def entropy(values: Sequence) -> float:
    counts = np.asarray(list(Counter(values).values()), np.float64)
    p = counts / counts.sum()
    return float(-(p * np.log(p)).sum())


def diversity(
    images: np.ndarray,
    captions: Sequence[str],
    data_images: np.ndarray,
    data_captions: Sequence[str],
    size_threshold: float,
) -> float:
    """Mean over captions of H(generated layouts) / H(data layouts of that caption); captions
    whose data layouts have zero entropy are skipped. Unreadable images count as one layout."""

    def by_caption(imgs, caps):
        groups: dict[str, list] = {}
        for image, caption in zip(imgs, caps, strict=True):
            groups.setdefault(caption, []).append(layout(image, size_threshold))
        return groups

    generated = by_caption(images, captions)
    data = by_caption(data_images, data_captions)
    ratios = []
    for caption, layouts in generated.items():
        reference = entropy(data.get(caption, []) or [None])
        if reference > 0:
            ratios.append(entropy(layouts) / reference)
    return float(np.mean(ratios)) if ratios else math.nan
