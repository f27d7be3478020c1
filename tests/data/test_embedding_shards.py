"""Embedding shards: written by several processes, read back exactly, sharded per process."""

import json

import numpy as np
import pytest

from unclip_jax.data import embedding_shards

DIM, LENGTH = 6, 5


def _examples(start: int, count: int) -> dict:
    ids = np.arange(start, start + count)
    return {
        "image_embedding": np.tile(ids[:, None], (1, DIM)).astype(np.float16),
        "text_embedding": -np.tile(ids[:, None], (1, DIM)).astype(np.float32),
        "text_tokens": np.tile(ids[:, None], (1, LENGTH)).astype(np.int32),
        "caption": np.array([f"caption {i}" for i in ids]),
    }


@pytest.fixture(scope="module")
def directory(tmp_path_factory):
    root = tmp_path_factory.mktemp("embeddings")
    # Two writing processes: 27 and 12 examples, shards of 10.
    for tag, start, total in (("p00000", 0, 27), ("p00001", 27, 12)):
        with embedding_shards.EmbeddingShardWriter(root, tag=tag, shard_size=10) as writer:
            for offset in range(0, total, 4):
                writer.add(_examples(start + offset, min(4, total - offset)))
    return root


def test_round_trip(directory):
    shards = sorted(p.name for p in directory.glob("shard-*"))
    assert len(shards) == 5 and not list(directory.glob(".*partial"))
    source = embedding_shards.EmbeddingShards(directory)
    assert len(source) == 39
    assert set(source.fields) == {"image_embedding", "text_embedding", "text_tokens", "caption"}
    for i in (0, 9, 10, 26, 27, 38):
        example = source[i]
        np.testing.assert_array_equal(example["image_embedding"], np.full(DIM, i, np.float16))
        np.testing.assert_array_equal(example["text_tokens"], np.full(LENGTH, i, np.int32))
        assert str(example["caption"]) == f"caption {i}"
    with pytest.raises(IndexError):
        source[39]
    text_only = embedding_shards.EmbeddingShards(directory, fields=("text_embedding",))
    assert len(text_only) == 39 and set(text_only[30]) == {"text_embedding"}
    np.testing.assert_array_equal(text_only[30]["text_embedding"], np.full(DIM, -30.0))


def test_two_processes_read_disjoint_slices_covering_all(directory):
    seen = []
    for process in range(2):
        it = embedding_shards.embedding_iterator(
            directory,
            batch_size=4,
            seed=0,
            num_epochs=1,
            drop_remainder=False,
            process_index=process,
            process_count=2,
        )
        ids = np.concatenate([b["image_embedding"][:, 0] for b in it]).astype(int)
        seen.append(ids)
    assert not set(seen[0]) & set(seen[1])
    assert sorted(np.concatenate(seen)) == list(range(39))


def test_state_restore_gives_identical_batches(directory):
    def make():
        return embedding_shards.embedding_iterator(
            directory, batch_size=8, seed=3, fields=("image_embedding", "text_embedding", "caption")
        )

    it = make()
    for _ in range(6):  # past the end of the first epoch (39 examples)
        batch = next(it)
    assert batch["caption"].shape == (8,) and "text_tokens" not in batch
    state = json.loads(json.dumps(it.get_state()))
    want = next(it)
    fresh = make()
    fresh.set_state(state)
    got = next(fresh)
    for key in want:
        np.testing.assert_array_equal(got[key], want[key])


def test_bad_inputs_are_refused(tmp_path):
    with pytest.raises(ValueError, match="no embedding shards"):
        embedding_shards.EmbeddingShards(tmp_path)
    writer = embedding_shards.EmbeddingShardWriter(tmp_path, shard_size=4)
    with pytest.raises(ValueError, match="missing"):
        writer.add({"image_embedding": np.zeros((2, DIM))})
    with pytest.raises(ValueError, match="leading length"):
        writer.add({"image_embedding": np.zeros((2, DIM)), "text_embedding": np.zeros((3, DIM))})
    writer.add({"image_embedding": np.zeros((4, DIM)), "text_embedding": np.zeros((4, DIM))})
    with pytest.raises(ValueError, match="token_states"):
        embedding_shards.EmbeddingShards(tmp_path, fields=("image_embedding", "token_states"))
