"""Reads captioned-shapes images back into objects, and scores an image against a caption.

This is how generation is judged on the shapes data (`unclip_jax/data/shapes_captions.py`):
an image of any resolution goes in, the objects it shows come out, each with its colour, shape
and rough position, or "unknown" for a colour or shape it cannot read with confidence.

Reading: the background is the median of the border; pixels far from it form connected
components (one per object, objects never touch); a component's colour is the nearest palette
colour to its core pixels; its shape is the template (rendered by `shapes_render` at the
component's box centre, sized to its coverage mass) with the highest soft IoU against the
component's coverage, when that IoU is high and clear of the runner-up.
"""

import dataclasses
import re

import numpy as np
from scipy import ndimage

from unclip_jax.data import shapes_render

UNKNOWN = "unknown"
_FOREGROUND_DISTANCE = 70.0  # RGB distance from the background that counts as an object
_MIN_AREA_FRACTION = 0.01  # smaller components are noise
_COLOUR_TOLERANCE = 70.0  # largest RGB distance from a palette colour still read as it
_MIN_IOU = 0.6
_MIN_IOU_MARGIN = 0.04


@dataclasses.dataclass(frozen=True)
class ReadObject:
    colour: str  # a name of shapes_render.COLOURS or UNKNOWN
    shape: str  # a name of shapes_render.SHAPES or UNKNOWN
    x: float  # centre / width
    y: float  # centre / height, downwards
    region: str  # rough position, shapes_render.region_name
    iou: float  # soft IoU of the best shape template


@dataclasses.dataclass(frozen=True)
class CaptionScore:
    objects_matched: int  # caption objects found with the right colour and shape
    objects_named: int  # objects the caption names
    extra_objects: int  # objects read in the image that the caption does not name
    relation_correct: bool | None  # None when the caption names no relation or position
    correct: bool  # every object matched, no extra object, relation right when named


def to_uint8_range(image: np.ndarray) -> np.ndarray:
    """[H, W, 3] uint8 in [0, 255] or float in [-1, 1] -> float32 in [0, 255]."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"image must be [H, W, 3], got shape {image.shape}")
    if np.issubdtype(image.dtype, np.floating):
        return (np.clip(image, -1, 1).astype(np.float32) + 1) * 127.5
    return image.astype(np.float32)


def _background(image: np.ndarray) -> np.ndarray:
    frame = max(1, image.shape[0] // 32)
    border = np.concatenate(
        [
            image[:frame].reshape(-1, 3),
            image[-frame:].reshape(-1, 3),
            image[:, :frame].reshape(-1, 3),
            image[:, -frame:].reshape(-1, 3),
        ]
    )
    return np.median(border, axis=0)


def _read_colour(pixels: np.ndarray, background: np.ndarray) -> tuple[str, np.ndarray]:
    """Names the colour of a component from its core pixels [N, 3] (those farthest from bg)."""
    distance = np.linalg.norm(pixels - background, axis=-1)
    core = pixels[distance >= np.quantile(distance, 0.6)]
    mean = core.mean(axis=0)
    errors = np.linalg.norm(shapes_render.PALETTE - mean, axis=-1)
    best = int(np.argmin(errors))
    colour = shapes_render.COLOURS[best] if errors[best] <= _COLOUR_TOLERANCE else UNKNOWN
    return colour, shapes_render.PALETTE[best]


def _read_shape(alpha: np.ndarray) -> tuple[str, float, float]:
    """Best shape template for coverage `alpha` [H, W]; returns (shape, iou, margin)."""
    ys, xs = np.nonzero(alpha >= 0.5)
    if not ys.size:
        return UNKNOWN, 0.0, 0.0
    cy, cx = (ys.min() + ys.max() + 1) / 2, (xs.min() + xs.max() + 1) / 2
    mass = alpha.sum()
    scores = {}
    for shape in shapes_render.SHAPES:
        extent = float(np.sqrt(mass / shapes_render.shape_area(shape, 1.0)))
        box = (0, alpha.shape[0], 0, alpha.shape[1])
        cover = shapes_render.shape_coverage(shape, cx, cy, extent, box)
        scores[shape] = float(np.minimum(alpha, cover).sum() / np.maximum(alpha, cover).sum())
    ranked = sorted(scores, key=scores.get, reverse=True)
    return ranked[0], scores[ranked[0]], scores[ranked[0]] - scores[ranked[1]]


def read_objects(image: np.ndarray) -> list[ReadObject]:
    """Objects in `image` ([H, W, 3], uint8 or float in [-1, 1]), left to right."""
    image = to_uint8_range(image)
    height, width = image.shape[:2]
    background = _background(image)
    foreground = np.linalg.norm(image - background, axis=-1) > _FOREGROUND_DISTANCE
    labels, _ = ndimage.label(foreground, structure=np.ones((3, 3)))
    objects = []
    for index, region in enumerate(ndimage.find_objects(labels), start=1):
        mask = labels[region] == index
        if mask.sum() < _MIN_AREA_FRACTION * height * width:
            continue
        colour, rgb = _read_colour(image[region][mask], background)
        # Coverage of the colour over the component's box grown by a few pixels (soft edges).
        pad = 2 + height // 32
        y0, y1 = max(region[0].start - pad, 0), min(region[0].stop + pad, height)
        x0, x1 = max(region[1].start - pad, 0), min(region[1].stop + pad, width)
        direction = rgb - background
        alpha = (image[y0:y1, x0:x1] - background) @ direction / (direction @ direction)
        others = (labels[y0:y1, x0:x1] != index) & (labels[y0:y1, x0:x1] != 0)
        alpha = np.where(others, 0.0, np.clip(alpha, 0, 1))
        shape, iou, margin = _read_shape(alpha)
        if iou < _MIN_IOU or margin < _MIN_IOU_MARGIN:
            shape = UNKNOWN
        ys, xs = np.nonzero(alpha >= 0.5)
        cx = (x0 + (xs.min() + xs.max() + 1) / 2) / width if xs.size else 0.5
        cy = (y0 + (ys.min() + ys.max() + 1) / 2) / height if ys.size else 0.5
        region_name = shapes_render.region_name(cx, cy)
        objects.append(ReadObject(colour, shape, float(cx), float(cy), region_name, iou))
    return sorted(objects, key=lambda o: (o.x, o.y))


def reads_exactly(objects: list[ReadObject], scene: shapes_render.Scene) -> bool:
    """Whether the read objects are exactly the scene's (colour, shape) multiset."""
    read = sorted((o.colour, o.shape) for o in objects)
    truth = sorted((o.colour, o.shape) for o in scene.objects)
    return read == truth


def is_false_read(objects: list[ReadObject], scene: shapes_render.Scene) -> bool:
    """Whether any read object states a colour or shape that is wrong ("unknown" never is).

    Each read object is compared with the nearest unclaimed true object; a read object beyond
    the true count is a false read unless both its colour and shape are unknown.
    """
    truth = list(scene.objects)
    for obj in objects:
        if not truth:
            if (obj.colour, obj.shape) != (UNKNOWN, UNKNOWN):
                return True
            continue
        nearest = min(truth, key=lambda t: (t.x - obj.x) ** 2 + (t.y - obj.y) ** 2)
        truth.remove(nearest)
        if obj.colour not in (UNKNOWN, nearest.colour) or obj.shape not in (UNKNOWN, nearest.shape):
            return True
    return False


_OBJECT = re.compile(
    r"\ban? (?:(?:{sizes}) )?({colours}) ({shapes})\b".format(
        sizes="|".join(shapes_render.SIZES),
        colours="|".join(shapes_render.COLOURS),
        shapes="|".join(shapes_render.SHAPES),
    )
)
# Relation phrase between the first and second named object -> (axis, sign of first − second).
_RELATIONS = {
    "to the left of": ("x", -1),
    "to the right of": ("x", 1),
    "above": ("y", -1),
    "below": ("y", 1),
}
_POSITIONS = (
    (re.compile(r"in the (top|bottom) (left|right) corner"), lambda m: f"{m[1]} {m[2]}"),
    (re.compile(r"on the (left|right)\b"), lambda m: m[1]),
    (re.compile(r"at the (top|bottom)\b"), lambda m: m[1]),
    (re.compile(r"in the center\b"), lambda m: "center"),
)


def parse_caption(caption: str) -> tuple[list[tuple[str, str]], str | None, str | None]:
    """(colour, shape) pairs named in order, the relation phrase, and the position region."""
    caption = caption.lower()
    named = _OBJECT.findall(caption)
    relation = next((r for r in _RELATIONS if f" {r} " in caption), None)
    position = next((fn(m) for pattern, fn in _POSITIONS if (m := pattern.search(caption))), None)
    return named, relation, position


def score_caption(image: np.ndarray, caption: str) -> CaptionScore:
    """Scores `image` against a template caption: colour+shape per object, relation, position."""
    named, relation, position = parse_caption(caption)
    read = read_objects(image)
    unmatched = list(read)
    matched: list[ReadObject | None] = []
    for colour, shape in named:
        hit = next((o for o in unmatched if (o.colour, o.shape) == (colour, shape)), None)
        if hit is not None:
            unmatched.remove(hit)
        matched.append(hit)
    relation_correct = None
    if relation is not None and len(matched) >= 2:
        first, second = matched[0], matched[1]
        axis, sign = _RELATIONS[relation]
        relation_correct = (
            first is not None
            and second is not None
            and sign * (getattr(first, axis) - getattr(second, axis)) > 0
        )
    elif position is not None and len(matched) == 1:
        relation_correct = matched[0] is not None and matched[0].region == position
    objects_matched = sum(m is not None for m in matched)
    correct = (
        bool(named)
        and objects_matched == len(named)
        and not unmatched
        and relation_correct is not False
    )
    return CaptionScore(objects_matched, len(named), len(unmatched), relation_correct, correct)


def caption_accuracy(images: np.ndarray, captions: list[str]) -> float:
    """Fraction of images [N, H, W, 3] that `score_caption` finds correct for their caption."""
    if len(images) != len(captions) or not len(captions):
        raise ValueError(
            f"need as many images as captions (at least one), got {len(images)} and {len(captions)}"
        )
    return float(
        np.mean([score_caption(i, c).correct for i, c in zip(images, captions, strict=True)])
    )
