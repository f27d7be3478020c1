"""Per-example preprocessing on the host (numpy + PIL): caption choice, resize, crop, flip.

Runs in the input pipeline's worker threads (`input_pipeline.DataIterator`), before batching.
"""

import dataclasses
import re

import numpy as np
from PIL import Image

from unclip_jax.data import shapes_render

# Captions that name a side must keep the image unflipped (they would become false).
_SIDE_WORDS = re.compile(r"\b(left|right)\b", re.IGNORECASE)
_TEXT_FIELDS = ("captions", "caption")


def names_a_side(caption: str) -> bool:
    return _SIDE_WORDS.search(caption) is not None


def choose_caption(example: dict, rng: np.random.Generator) -> str:
    """One caption of `example["captions"]` (a list) at random, or `example["caption"]`."""
    if "captions" in example:
        options = [c.decode() if isinstance(c, bytes) else str(c) for c in example["captions"]]
        options = [c for c in options if c] or [""]
        return options[int(rng.integers(len(options)))]
    caption = example.get("caption", "")
    return caption.decode() if isinstance(caption, bytes) else str(caption)


def resize_shorter_side(image: np.ndarray, size: int) -> np.ndarray:
    """uint8 [H, W, 3] → shorter side `size`, aspect kept; bicubic with antialiasing (PIL)."""
    height, width = image.shape[:2]
    if min(height, width) == size:
        return image
    scale = size / min(height, width)
    shape = (max(size, round(width * scale)), max(size, round(height * scale)))
    return np.asarray(Image.fromarray(image).resize(shape, Image.BICUBIC, reducing_gap=None))


def crop(image: np.ndarray, size: int, rng: np.random.Generator | None) -> np.ndarray:
    """[H, W, C] → [size, size, C], at a random offset when `rng` is given, else centred."""
    height, width = image.shape[:2]
    if rng is None:
        top, left = (height - size) // 2, (width - size) // 2
    else:
        top = int(rng.integers(height - size + 1))
        left = int(rng.integers(width - size + 1))
    return image[top : top + size, left : left + size]


def to_unit_range(image: np.ndarray) -> np.ndarray:
    """uint8 [..., 3] → float32 in [-1, 1]."""
    return image.astype(np.float32) / 127.5 - 1.0


def _mirror_ground_truth(fields: dict) -> dict:
    """Shapes ground truth after a horizontal flip: x mirrored; a left-right pair swapped so
    that object 0 stays the left one."""
    if "object_x" not in fields:
        return fields
    x = np.asarray(fields["object_x"])
    fields["object_x"] = np.where(x >= 0, 1.0 - x, x).astype(x.dtype)
    horizontal = shapes_render.RELATIONS.index("horizontal")
    if int(fields.get("relation", -1)) == horizontal and int(fields.get("num_objects", 0)) == 2:
        for key in [k for k in fields if k.startswith("object_")]:
            fields[key] = np.asarray(fields[key])[[1, 0]]
    return fields


@dataclasses.dataclass(frozen=True)
class ImageTextExample:
    """Source example → {"image" float32 [S, S, 3] in [-1, 1], "caption", "flipped", ...}.

    Numeric fields of the source (ground truth) pass through; `object_x` is mirrored on flips
    (values below 0 mark padding and are kept).
    """

    image_size: int
    resize_size: int
    random_crop: bool = True
    random_flip: bool = False

    def __post_init__(self):
        if self.resize_size < self.image_size:
            raise ValueError(
                f"resize_size must be >= image_size {self.image_size}, got {self.resize_size}"
            )

    def __call__(self, example: dict, rng: np.random.Generator) -> dict:
        caption = choose_caption(example, rng)
        image = np.asarray(example["image"])
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=-1)
        image = resize_shorter_side(image[..., :3], self.resize_size)
        image = crop(image, self.image_size, rng if self.random_crop else None)
        flip = self.random_flip and bool(rng.random() < 0.5) and not names_a_side(caption)
        out = {
            key: value
            for key, value in example.items()
            if key not in ("image", *_TEXT_FIELDS) and np.asarray(value).dtype.kind in "biuf"
        }
        if flip:
            image = image[:, ::-1]
            out = _mirror_ground_truth(out)
        out["image"] = to_unit_range(image)
        out["caption"] = caption
        out["flipped"] = flip
        return out
