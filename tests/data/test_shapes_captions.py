"""The shapes builder: deterministic bytes, held-out combinations, geometry of the scenes."""

import dataclasses
import pathlib
import time

import numpy as np
import pytest

from unclip_jax.data import shapes_captions, shapes_render

TINY = dataclasses.replace(
    shapes_captions.CONFIGS[1], name="tiny_32px", num_examples=(240, 20, 20, 60), seed=3
)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    dirs = [tmp_path_factory.mktemp(f"tfds{i}") for i in range(2)]
    builders = [shapes_captions.build(TINY, data_dir=str(d)) for d in dirs]
    return dirs, builders


def _records(root: pathlib.Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(root.rglob("*.array_record-*")) if p.is_file()}


def test_same_seed_same_bytes(built):
    dirs, _ = built
    first, second = _records(dirs[0]), _records(dirs[1])
    assert len(first) >= 4 and first.keys() == second.keys()
    assert all(first[name] == second[name] for name in first)


def test_split_sizes_and_features(built):
    _, (builder, _) = built
    for split, count in zip(shapes_captions.SPLIT_IDS, TINY.num_examples, strict=True):
        assert builder.info.splits[split].num_examples == count
    example = builder.as_data_source("train")[0]
    assert example["image"].shape == (32, 32, 3) and example["image"].dtype == np.uint8
    assert len(example["captions"]) == shapes_captions.CAPTIONS_PER_IMAGE
    # The stored image is the rendering of the stored ground truth (kept as float32).
    scene = shapes_captions.scene_of(example)
    redrawn = shapes_render.render(scene, 32).astype(int)
    assert np.abs(example["image"].astype(int) - redrawn).max() <= 2


def _pairs(source) -> list[set[tuple[str, str]]]:
    out = []
    for i in range(len(source)):
        scene = shapes_captions.scene_of(source[i])
        out.append({(o.colour, o.shape) for o in scene.objects})
    return out


def test_unseen_combinations_absent_from_train(built):
    _, (builder, _) = built
    for split in ("train", "validation", "test"):
        assert not any(p & shapes_render.HELD_OUT for p in _pairs(builder.as_data_source(split)))
    unseen = _pairs(builder.as_data_source("test_unseen"))
    assert all(p & shapes_render.HELD_OUT for p in unseen)


def test_scene_geometry():
    """Objects never overlap, are at least 12 px across at 32 px, and edges are anti-aliased."""
    spec = shapes_render.SceneSpec()
    for i in range(300):
        scene = shapes_render.sample_scene(np.random.default_rng(i), spec)
        covers = []
        for obj in scene.objects:
            assert obj.extent * 32 >= 12
            alone = shapes_render.Scene((obj,), "none")
            covers.append(np.any(shapes_render.render(alone, 32) != shapes_render.BACKGROUND, -1))
        if len(covers) == 2:
            assert not np.any(covers[0] & covers[1])
            a, b = scene.objects
            assert (a.x < b.x) if scene.relation == "horizontal" else (a.y < b.y)
    image = shapes_render.render(scene, 64).reshape(-1, 3).astype(np.float32)
    palette = np.concatenate([shapes_render.PALETTE, shapes_render.BACKGROUND[None]])
    in_between = np.min(np.linalg.norm(image[:, None] - palette[None], axis=-1), axis=1) > 20
    assert in_between.sum() > 0


def test_captions_describe_the_scene():
    scene = shapes_render.Scene(
        (
            shapes_render.ShapeObject("star", "orange", "small", 0.5, 0.2, 0.375),
            shapes_render.ShapeObject("circle", "green", "large", 0.5, 0.75, 0.44),
        ),
        "vertical",
    )
    texts = shapes_render.captions(scene, np.random.default_rng(0), 40)
    assert all("orange star" in t and "green circle" in t for t in texts)
    assert any("above" in t for t in texts) and any("below" in t for t in texts)
    assert not any("left" in t or "right" in t for t in texts)
    assert all(t.startswith(("a ", "an ")) and " a orange" not in t for t in texts)


def test_configs():
    names = {c.name: c for c in shapes_captions.ShapesCaptions.BUILDER_CONFIGS}
    assert {"32px", "64px", "256px", "large_64px"} <= set(names)
    assert shapes_captions.ShapesCaptions.BUILDER_CONFIGS[0].name == "64px"
    assert names["64px"].num_examples == (20_000, 2_000, 2_000, 2_000)
    assert min(names["large_64px"].scene.extents) >= 0.6
    assert names["large_64px"].scene.max_objects == 1


@pytest.mark.slow
def test_default_config_builds_within_a_minute(tmp_path):
    start = time.perf_counter()
    builder = shapes_captions.build("64px", data_dir=str(tmp_path))
    seconds = time.perf_counter() - start
    print(f"default shapes_captions config built in {seconds:.1f} s")
    assert builder.info.splits["train"].num_examples == 20_000
    assert seconds <= 60
