"""The shapes oracle reads rendered ground truth, refuses to guess on degraded images, and scores
captions."""

import numpy as np
import pytest
from scipy import ndimage

from unclip_jax.data import shapes_captions, shapes_render
from unclip_jax.evals import shapes_oracle

CONFIG = shapes_captions.CONFIGS[0]


def _scenes(count: int, config=CONFIG) -> list[shapes_render.Scene]:
    return [
        shapes_captions.scene_of(shapes_captions.make_example(config, "test", i))
        for i in range(count)
    ]


@pytest.mark.parametrize(("size", "count"), [(32, 200), (64, 200), (256, 40)])
def test_reads_ground_truth_exactly(size, count):
    scenes = _scenes(count)
    exact = np.mean(
        [
            shapes_oracle.reads_exactly(
                shapes_oracle.read_objects(shapes_render.render(s, size)), s
            )
            for s in scenes
        ]
    )
    print(f"oracle exact reads at {size}px: {exact:.1%} of {count}")
    assert exact >= 0.98


@pytest.mark.parametrize(("size", "least"), [(16, 0.95), (64, 0.98)])
def test_reads_large_single_objects(size, least):
    """The demo's config: one large object, readable down to a 16 px base decoder's output."""
    scenes = _scenes(200, shapes_captions.CONFIGS[-1])
    reads = [shapes_oracle.read_objects(shapes_render.render(s, size)) for s in scenes]
    pairs = list(zip(reads, scenes, strict=True))
    exact = np.mean([shapes_oracle.reads_exactly(r, s) for r, s in pairs])
    print(f"oracle exact reads of large objects at {size}px: {exact:.1%}")
    assert exact >= least
    # Rough positions follow the object's centre.
    for r, s in pairs:
        if r:
            assert abs(r[0].x - s.objects[0].x) < 0.06 and abs(r[0].y - s.objects[0].y) < 0.06


def test_float_images_read_like_uint8():
    scene = _scenes(3)[2]
    image = shapes_render.render(scene, 64)
    as_float = image.astype(np.float32) / 127.5 - 1
    assert shapes_oracle.read_objects(as_float) == shapes_oracle.read_objects(image)


@pytest.mark.parametrize("size", [32, 64])
def test_false_reads_are_rare_on_blurred_and_noised_images(size):
    rng = np.random.default_rng(0)
    false_reads, exact = [], []
    for scene in _scenes(150):
        image = shapes_render.render(scene, size).astype(np.float32)
        sigma = rng.uniform(0.5, 2.0) * size / 64
        image = ndimage.gaussian_filter(image, (sigma, sigma, 0))
        image = image + rng.normal(0, rng.uniform(5, 25), image.shape)
        read = shapes_oracle.read_objects(np.clip(image, 0, 255).astype(np.uint8))
        false_reads.append(shapes_oracle.is_false_read(read, scene))
        exact.append(shapes_oracle.reads_exactly(read, scene))
    print(f"{size}px blurred+noised: false reads {np.mean(false_reads):.1%}", end=", ")
    print(f"exact reads {np.mean(exact):.1%}")
    assert np.mean(false_reads) <= 0.02
    assert np.mean(exact) >= 0.5  # it still reads most of them


def test_noise_alone_reads_as_nothing():
    rng = np.random.default_rng(1)
    noise = np.clip(240 + rng.normal(0, 20, (64, 64, 3)), 0, 255).astype(np.uint8)
    assert shapes_oracle.read_objects(noise) == []


def _pair_scene() -> shapes_render.Scene:
    objects = (
        shapes_render.ShapeObject("circle", "red", "large", 0.25, 0.5, 0.44),
        shapes_render.ShapeObject("square", "blue", "small", 0.75, 0.4, 0.375),
    )
    return shapes_render.Scene(objects, "horizontal")


@pytest.mark.parametrize(
    ("caption", "correct", "relation"),
    [
        ("a red circle to the left of a blue square", True, True),
        ("a blue square to the right of a large red circle", True, True),
        ("a red circle and a blue square", True, None),
        ("a blue square to the left of a red circle", False, False),
        ("a green circle to the left of a blue square", False, False),
        ("a red circle", False, None),  # the blue square is extra
    ],
)
def test_score_caption(caption, correct, relation):
    score = shapes_oracle.score_caption(shapes_render.render(_pair_scene(), 64), caption)
    assert score.correct is correct
    assert score.relation_correct is relation


def test_caption_accuracy():
    images = np.stack([shapes_render.render(_pair_scene(), 32)] * 2)
    captions = ["a red circle to the left of a blue square", "a red circle above a blue square"]
    assert shapes_oracle.caption_accuracy(images, captions) == 0.5
    with pytest.raises(ValueError, match="as many images"):
        shapes_oracle.caption_accuracy(images, captions[:1])


def test_score_caption_position():
    scene = shapes_render.Scene(
        (shapes_render.ShapeObject("star", "orange", "small", 0.8, 0.2, 0.375),), "none"
    )
    image = shapes_render.render(scene, 32)
    assert shapes_oracle.score_caption(image, "an orange star in the top right corner").correct
    assert not shapes_oracle.score_caption(image, "an orange star on the left").correct
    assert shapes_oracle.score_caption(image, "a small orange star").correct


def test_off_palette_objects_read_as_unknown():
    scene = _pair_scene()
    image = shapes_render.render(scene, 64)
    for colour in [(0, 0, 0), (120, 120, 120), (250, 160, 200)]:
        painted = np.where(
            np.any(image != shapes_render.BACKGROUND, -1, keepdims=True), colour, image
        )
        read = shapes_oracle.read_objects(painted.astype(np.uint8))
        assert read and all(o.colour == shapes_oracle.UNKNOWN for o in read)
        assert not shapes_oracle.is_false_read(read, scene)


def test_shape_areas_match_the_rendering():
    grid = (np.arange(400) + 0.5) / 400 - 0.5
    for shape in shapes_render.SHAPES:
        measured = shapes_render.shape_inside(shape, grid[None], grid[:, None], 1.0).mean()
        assert abs(measured - shapes_render.shape_area(shape, 1.0)) < 5e-3
