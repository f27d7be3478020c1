"""The input pipeline: per-process shards, seeded epochs, checkpointable state, flips, globals."""

import dataclasses
import json

import jax
import numpy as np
import pytest

from unclip_jax.data import input_pipeline, preprocess, shapes_captions
from unclip_jax.evals import shapes_oracle
from unclip_jax.sharding import batch_sharding, make_mesh

LENGTH = 8
CAPTIONS = ("a red circle", "a blue star on the left", "a green square to the right of a star")


def tokenize(captions: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Words → small ids (sum of character codes), padded to LENGTH."""
    ids = np.zeros((len(captions), LENGTH), np.int32)
    for row, caption in enumerate(captions):
        words = caption.split()[:LENGTH]
        ids[row, : len(words)] = [1 + sum(map(ord, w)) % 997 for w in words]
    return ids, ids > 0


def _source(count: int = 53) -> list[dict]:
    rng = np.random.default_rng(0)
    return [
        {
            "image": rng.integers(0, 256, (20, 24, 3), dtype=np.uint8),
            "captions": [c.encode() for c in CAPTIONS],
            "index": np.int64(i),
        }
        for i in range(count)
    ]


def _iterator(source, **kwargs):
    defaults = dict(batch_size=8, image_size=16, tokenize=tokenize, seed=5, random_flip=True)
    return input_pipeline.image_text_iterator(source, **{**defaults, **kwargs})


def _assert_batches_equal(a: dict, b: dict):
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_batch_contents():
    batch = next(_iterator(_source()))
    assert batch["image"].shape == (8, 16, 16, 3) and batch["image"].dtype == np.float32
    assert batch["image"].min() >= -1 and batch["image"].max() <= 1
    assert batch["tokens"].shape == (8, LENGTH) and batch["tokens"].dtype == np.int32
    assert batch["mask"].dtype == bool
    assert set(batch["caption"]) <= set(CAPTIONS)
    assert batch["index"].shape == (8,)


def test_two_processes_get_disjoint_shards_covering_the_split():
    source = _source(53)
    seen = []
    for process in range(2):
        it = _iterator(
            source, num_epochs=1, drop_remainder=False, process_index=process, process_count=2
        )
        seen.append(np.concatenate([b["index"] for b in it]))
    assert not set(seen[0]) & set(seen[1])
    assert sorted(np.concatenate(seen)) == list(range(53))
    assert abs(len(seen[0]) - len(seen[1])) <= 1
    assert len(set(seen[0])) == len(seen[0])
    with pytest.raises(ValueError, match="process_index"):
        input_pipeline.process_range(10, process_index=2, process_count=2)


def test_epochs_are_seeded_permutations():
    source = _source(48)
    it = _iterator(source, seed=1)
    order = np.concatenate([next(it)["index"] for _ in range(12)])
    epochs = order.reshape(2, 48)
    assert all(sorted(e) == list(range(48)) for e in epochs)
    assert not np.array_equal(epochs[0], epochs[1])
    again = np.concatenate([b["index"] for b in _iterator(source, seed=1, num_epochs=1)])
    np.testing.assert_array_equal(again, epochs[0])
    other = np.concatenate([b["index"] for b in _iterator(source, seed=2, num_epochs=1)])
    assert not np.array_equal(other, epochs[0])


@pytest.mark.parametrize("k", [2, 6])  # 6 batches of 8 cross the epoch boundary at 53
def test_restored_state_gives_the_identical_next_batch(k):
    source = _source(53)
    it = _iterator(source)
    for _ in range(k):
        next(it)
    state = json.loads(json.dumps(it.get_state()))
    expected = [next(it) for _ in range(2)]
    fresh = _iterator(source)
    fresh.set_state(state)
    for want in expected:
        _assert_batches_equal(next(fresh), want)
    with pytest.raises(ValueError, match="seed"):
        _iterator(source, seed=6).set_state(state)


def test_flips_never_touch_side_captions():
    batches = [b for b in _iterator(_source(64), num_epochs=3)]
    captions = np.concatenate([b["caption"] for b in batches])
    flipped = np.concatenate([b["flipped"] for b in batches])
    sides = np.array([preprocess.names_a_side(c) for c in captions])
    assert sides.any() and not flipped[sides].any()
    assert 0.3 < flipped[~sides].mean() < 0.7


def test_flip_mirrors_image_and_ground_truth():
    example = {
        "image": np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8),
        "captions": [b"a red circle and a blue square"],
        "relation": np.int32(1),
        "num_objects": np.int32(2),
        "object_x": np.array([0.2, 0.7], np.float32),
        "object_colour": np.array([0, 4], np.int32),
    }
    fn = preprocess.ImageTextExample(16, 16, random_crop=False, random_flip=True)
    plain = dataclasses.replace(fn, random_flip=False)(dict(example), np.random.default_rng(0))
    for seed in range(20):
        out = fn(dict(example), np.random.default_rng(seed))
        if out["flipped"]:
            break
    assert out["flipped"]
    np.testing.assert_array_equal(out["image"], plain["image"][:, ::-1])
    np.testing.assert_allclose(out["object_x"], [0.3, 0.8])  # swapped: object 0 stays left
    np.testing.assert_array_equal(out["object_colour"], [4, 0])


def test_to_global_shards_the_batch_over_the_mesh():
    mesh = make_mesh({"data": 4, "fsdp": 2})
    batch = next(_iterator(_source()))
    out = input_pipeline.to_global(batch, mesh)
    assert isinstance(out["image"], jax.Array)
    assert out["image"].sharding.is_equivalent_to(batch_sharding(mesh), 4)
    assert len(out["image"].addressable_shards) == 8
    np.testing.assert_array_equal(np.asarray(out["tokens"]), batch["tokens"])
    assert isinstance(out["caption"], np.ndarray)
    wrapped = input_pipeline.GlobalIterator(_iterator(_source()), mesh)
    np.testing.assert_array_equal(np.asarray(next(wrapped)["image"]), batch["image"])
    assert wrapped.get_state()["position"] == 8


@pytest.fixture(scope="module")
def shapes_source(tmp_path_factory):
    config = dataclasses.replace(
        shapes_captions.CONFIGS[0], name="tiny_pipeline", num_examples=(64, 8, 8, 8)
    )
    builder = shapes_captions.build(config, data_dir=str(tmp_path_factory.mktemp("tfds")))
    return builder.as_data_source("train")


def test_shapes_batches_keep_ground_truth_true(shapes_source):
    """Through resize and flips, the oracle still reads the (mirrored) ground truth."""
    it = _iterator(shapes_source, batch_size=16, image_size=32, random_crop=False, num_epochs=1)
    batches = list(it)
    assert len(batches) == 4
    flips = 0
    for batch in batches:
        for i in range(16):
            read = shapes_oracle.read_objects(batch["image"][i])
            count = int(batch["num_objects"][i])
            assert len(read) == count
            truth_x = sorted(batch["object_x"][i][:count])
            np.testing.assert_allclose(sorted(o.x for o in read), truth_x, atol=0.06)
            if batch["relation"][i] == 1:
                assert batch["object_x"][i][0] < batch["object_x"][i][1]
            flips += bool(batch["flipped"][i])
    assert flips > 0


def test_errors_in_workers_reach_the_consumer():
    def broken(example, rng):
        raise KeyError("no image field")

    it = input_pipeline.DataIterator(_source(), batch_size=4, seed=0, example_fn=broken)
    with pytest.raises(KeyError, match="no image field"):
        next(it)
