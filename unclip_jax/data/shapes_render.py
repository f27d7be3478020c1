"""Captioned shapes: vocabulary, scene sampling, anti-aliased rendering and caption templates.

Pure numpy, no TensorFlow: the TFDS builder (`shapes_captions.py`) and the oracle
(`unclip_jax/evals/shapes_oracle.py`) share it. A scene is one or two objects on a plain
background; each object has a shape, a colour, a size class, a centre (x, y in [0, 1] of the
image side, y downwards) and an extent (width as a fraction of the side). Objects never overlap.
"""

import dataclasses
import math
import re

import numpy as np

SHAPES = ("circle", "square", "triangle", "star")
COLOURS = ("red", "orange", "yellow", "green", "blue", "purple")
SIZES = ("small", "large")
# sRGB values of the named colours and of the background.
PALETTE = np.array(
    [
        (215, 40, 40),  # red
        (245, 140, 20),  # orange
        (235, 215, 30),  # yellow
        (40, 160, 60),  # green
        (40, 90, 215),  # blue
        (140, 55, 180),  # purple
    ],
    dtype=np.float32,
)
BACKGROUND = np.array((240, 240, 240), dtype=np.float32)
# Colour–shape pairs that occur only in the `test_unseen` split, one per shape.
HELD_OUT = frozenset(
    {("purple", "circle"), ("yellow", "square"), ("blue", "triangle"), ("red", "star")}
)
RELATIONS = ("none", "horizontal", "vertical")  # object 0 is left of / above object 1
MAX_OBJECTS = 2
_STAR_INNER = 0.45  # inner / outer radius of the five-pointed star


@dataclasses.dataclass(frozen=True)
class SceneSpec:
    """How scenes are drawn: object extents per size class and how many objects."""

    extents: tuple[float, float] = (0.375, 0.44)  # width / side for small, large
    max_objects: int = 2
    gap: float = 0.06  # least distance between two objects along their relation axis
    margin: float = 0.02  # least distance between an object and the border

    def __post_init__(self):
        if self.max_objects not in (1, 2):
            raise ValueError(f"max_objects must be 1 or 2, got {self.max_objects}")
        largest = max(self.extents)
        if self.max_objects == 2:
            room = 1 - 2 * largest - 2 * self.margin - self.gap
        else:
            room = 1 - largest - 2 * self.margin
        if room < 0:
            raise ValueError(f"objects of extents {self.extents} do not fit: {self}")


@dataclasses.dataclass(frozen=True)
class ShapeObject:
    shape: str
    colour: str
    size: str
    x: float  # centre, fraction of the width
    y: float  # centre, fraction of the height (downwards)
    extent: float  # width, fraction of the side


@dataclasses.dataclass(frozen=True)
class Scene:
    objects: tuple[ShapeObject, ...]
    relation: str  # one of RELATIONS


def _regular_polygon(n: int, radius: float, phase: float) -> np.ndarray:
    angles = phase + 2 * np.pi * np.arange(n) / n
    return np.stack([radius * np.cos(angles), radius * np.sin(angles)], axis=-1)


def _star_vertices(outer: float) -> tuple[np.ndarray, np.ndarray]:
    """Tips and inner vertices of an upright five-pointed star centred on its own bounding box."""
    tips = _regular_polygon(5, outer, -np.pi / 2)
    inner = _regular_polygon(5, outer * _STAR_INNER, -np.pi / 2 + np.pi / 5)
    top, bottom = tips[:, 1].min(), inner[:, 1].max()
    bottom = max(bottom, tips[:, 1].max())
    shift = (top + bottom) / 2
    return tips - [0, shift], inner - [0, shift]


def _polygon_distance(px: np.ndarray, py: np.ndarray, vertices: np.ndarray) -> np.ndarray:
    """Signed Euclidean distance from points to a simple polygon [V, 2], negative inside."""
    shape = np.broadcast_shapes(px.shape, py.shape)
    px, py = np.broadcast_to(px, shape), np.broadcast_to(py, shape)
    nearest = np.full(shape, np.inf)
    inside = np.zeros(shape, dtype=bool)
    for i in range(len(vertices)):
        (x0, y0), (x1, y1) = vertices[i], vertices[i - 1]
        ex, ey = x1 - x0, y1 - y0
        wx, wy = px - x0, py - y0
        t = np.clip((wx * ex + wy * ey) / (ex * ex + ey * ey), 0, 1)
        nearest = np.minimum(nearest, (wx - ex * t) ** 2 + (wy - ey * t) ** 2)
        # Even-odd rule: a horizontal ray from the point crosses this edge.
        if ey != 0:
            inside ^= ((y0 > py) != (y1 > py)) & (px < x0 + ex * (py - y0) / ey)
    distance = np.sqrt(nearest)
    return np.where(inside, -distance, distance)


def _polygon_vertices(shape: str, extent: float) -> np.ndarray | None:
    """Outline [V, 2] of a polygonal shape centred on its bounding box; None for the circle."""
    h = extent / 2
    if shape == "square":
        return np.array([(-h, -h), (h, -h), (h, h), (-h, h)])
    if shape == "triangle":
        height = extent * math.sqrt(3) / 2
        return np.array([(0, -height / 2), (h, height / 2), (-h, height / 2)])
    if shape == "star":
        tips, inner = _star_vertices(h / math.sin(2 * math.pi / 5))
        return np.stack([tips, inner], axis=1).reshape(10, 2)  # tip, notch, tip, ...
    if shape == "circle":
        return None
    raise ValueError(f"shape must be one of {SHAPES}, got {shape!r}")


def shape_area(shape: str, extent: float) -> float:
    """Exact area of a shape `extent` wide."""
    vertices = _polygon_vertices(shape, extent)
    if vertices is None:
        return math.pi * extent * extent / 4
    x, y = vertices[:, 0], vertices[:, 1]
    return float(abs(np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y)) / 2)


def shape_distance(shape: str, px: np.ndarray, py: np.ndarray, extent: float) -> np.ndarray:
    """Signed distance (negative inside) from points to a shape, in the unit of `extent`.

    Points are offsets from the shape's centre; every shape is `extent` wide and centred on its
    bounding box.
    """
    h = extent / 2
    if shape == "circle":
        return np.hypot(px, py) - h
    if shape == "square":
        qx, qy = np.abs(px) - h, np.abs(py) - h
        outside = np.hypot(np.maximum(qx, 0), np.maximum(qy, 0))
        return outside + np.minimum(np.maximum(qx, qy), 0)
    return _polygon_distance(px, py, _polygon_vertices(shape, extent))


def shape_inside(shape: str, px: np.ndarray, py: np.ndarray, extent: float) -> np.ndarray:
    """Whether points (offsets from the shape's centre) lie inside the shape."""
    return shape_distance(shape, px, py, extent) <= 0


def shape_coverage(
    shape: str, cx: float, cy: float, extent: float, box: tuple[int, int, int, int]
) -> np.ndarray:
    """Anti-aliased coverage in [0, 1] of one shape over the pixel box (y0, y1, x0, x1).

    A pixel's coverage is 1/2 minus the signed distance from its centre to the outline, clipped
    (exact for straight edges crossing the pixel, box filter). `cx`, `cy`, `extent` are in
    pixels. Returns [y1 - y0, x1 - x0] float32.
    """
    y0, y1, x0, x1 = box
    ys = np.arange(y0, y1) + 0.5 - cy
    xs = np.arange(x0, x1) + 0.5 - cx
    distance = shape_distance(shape, xs[None, :], ys[:, None], extent)
    return np.clip(0.5 - distance, 0, 1).astype(np.float32)


def object_box(obj: ShapeObject, size: int) -> tuple[int, int, int, int]:
    """Pixel box (y0, y1, x0, x1) that contains the object at resolution `size`."""
    r = obj.extent * size / 2 + 1
    cx, cy = obj.x * size, obj.y * size
    return (
        max(int(cy - r), 0),
        min(math.ceil(cy + r), size),
        max(int(cx - r), 0),
        min(math.ceil(cx + r), size),
    )


def render(scene: Scene, size: int) -> np.ndarray:
    """The scene as uint8 [size, size, 3], with anti-aliased edges."""
    image = np.broadcast_to(BACKGROUND, (size, size, 3)).copy()
    for obj in scene.objects:
        box = object_box(obj, size)
        y0, y1, x0, x1 = box
        alpha = shape_coverage(obj.shape, obj.x * size, obj.y * size, obj.extent * size, box)
        colour = PALETTE[COLOURS.index(obj.colour)]
        region = image[y0:y1, x0:x1]
        image[y0:y1, x0:x1] = region + alpha[..., None] * (colour - region)
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def _sample_identity(rng: np.random.Generator, unseen: bool) -> tuple[str, str]:
    """A colour–shape pair: from HELD_OUT if `unseen`, else never from it."""
    if unseen:
        pairs = sorted(HELD_OUT)
        return pairs[rng.integers(len(pairs))]
    while True:
        colour, shape = COLOURS[rng.integers(len(COLOURS))], SHAPES[rng.integers(len(SHAPES))]
        if (colour, shape) not in HELD_OUT:
            return colour, shape


def sample_scene(rng: np.random.Generator, spec: SceneSpec, unseen: bool = False) -> Scene:
    """A random scene; with `unseen`, its first object is a held-out colour–shape pair.

    Two objects are placed apart along a random axis (horizontal or vertical) so that the
    relation between them is unambiguous; they are then listed left-to-right or top-to-bottom.
    """
    count = 1 + int(rng.integers(spec.max_objects))
    identities = [_sample_identity(rng, unseen and i == 0) for i in range(count)]
    sizes = [SIZES[rng.integers(len(SIZES))] for _ in range(count)]
    extents = [spec.extents[SIZES.index(s)] for s in sizes]
    lo = [e / 2 + spec.margin for e in extents]
    if count == 1:
        x, y = (rng.uniform(lo[0], 1 - lo[0]) for _ in range(2))
        (colour, shape), size, extent = identities[0], sizes[0], extents[0]
        return Scene((ShapeObject(shape, colour, size, x, y, extent),), "none")
    relation = RELATIONS[1 + int(rng.integers(2))]
    # Uniform over {along_0 >= lo_0, along_1 - along_0 >= need, along_1 <= 1 - lo_1}: the
    # sorted pair of two uniforms on the slack.
    need = (extents[0] + extents[1]) / 2 + spec.gap
    slack = 1 - lo[1] - lo[0] - need
    a, b = np.sort(rng.uniform(0, slack, 2))
    along = [lo[0] + a, lo[0] + need + b]
    across = [rng.uniform(lo[i], 1 - lo[i]) for i in range(2)]
    objects = []
    for i in range(2):
        x, y = (along[i], across[i]) if relation == "horizontal" else (across[i], along[i])
        colour, shape = identities[i]
        objects.append(ShapeObject(shape, colour, sizes[i], x, y, extents[i]))
    return Scene(tuple(objects), relation)


def region_name(x: float, y: float) -> str:
    """Rough position on a 3×3 grid: "top left", "top", ..., "center", ..., "bottom right"."""
    col = ("left", "", "right")[min(int(x * 3), 2)]
    row = ("top", "", "bottom")[min(int(y * 3), 2)]
    return " ".join(p for p in (row, col) if p) or "center"


def _where(region: str) -> str:
    if " " in region:
        return f"in the {region} corner"
    return {"top": "at the top", "bottom": "at the bottom", "center": "in the center"}.get(
        region, f"on the {region}"
    )


def _with_articles(caption: str) -> str:
    return re.sub(r"\ba (?=[aeiou])", "an ", caption)


_SINGLE_TEMPLATES = (
    "a {colour} {shape}",
    "a {size} {colour} {shape}",
    "a {colour} {shape} on a plain background",
    "a picture of a {size} {colour} {shape}",
    "a {colour} {shape} {where}",
)
_PAIR_TEMPLATES = {
    "horizontal": (
        "a {a} to the left of a {b}",
        "a {b} to the right of a {a}",
        "a {a} and a {b}",
    ),
    "vertical": (
        "a {a} above a {b}",
        "a {b} below a {a}",
        "a {a} and a {b}",
    ),
}


def _phrase(obj: ShapeObject, rng: np.random.Generator) -> str:
    words = ([obj.size] if rng.random() < 0.3 else []) + [obj.colour, obj.shape]
    return " ".join(words)


def captions(scene: Scene, rng: np.random.Generator, count: int = 4) -> list[str]:
    """`count` captions drawn from the templates: attributes alone, position, or relation."""
    out = []
    for _ in range(count):
        if len(scene.objects) == 1:
            obj = scene.objects[0]
            template = _SINGLE_TEMPLATES[rng.integers(len(_SINGLE_TEMPLATES))]
            out.append(
                template.format(
                    colour=obj.colour,
                    shape=obj.shape,
                    size=obj.size,
                    where=_where(region_name(obj.x, obj.y)),
                )
            )
        else:
            templates = _PAIR_TEMPLATES[scene.relation]
            template = templates[rng.integers(len(templates))]
            a, b = scene.objects
            out.append(template.format(a=_phrase(a, rng), b=_phrase(b, rng)))
    return [_with_articles(c) for c in out]
