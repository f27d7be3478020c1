"""Sources opened by name."""

import ml_collections
import numpy as np
import pytest
from PIL import Image

from unclip_jax.data import embedding_shards, sources


def test_open_sources_by_name(tmp_path):
    with embedding_shards.EmbeddingShardWriter(tmp_path / "emb", shard_size=4) as writer:
        writer.add({"image_embedding": np.ones((6, 3)), "text_embedding": np.zeros((6, 3))})
    assert len(sources.open_source(f"embeddings:{tmp_path / 'emb'}")) == 6

    (tmp_path / "images").mkdir()
    Image.fromarray(np.zeros((9, 12, 3), np.uint8)).save(tmp_path / "images" / "a.png")
    (tmp_path / "images" / "a.txt").write_text("a black picture")
    source = sources.open_source(
        f"folder_captions:{tmp_path / 'images'}", data_dir=str(tmp_path / "tfds"), image_size=8
    )
    assert len(source) == 1 and source[0]["image"].shape == (8, 8, 3)


@pytest.mark.parametrize("name", ["imagenet", "embeddings", "folder_captions:"])
def test_bad_names_are_refused(name):
    with pytest.raises(ValueError, match="source"):
        sources.open_source(name)


def test_folder_source_holds_out_a_validation_split_by_path_hash(tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    for i in range(40):
        Image.fromarray(np.full((8, 8, 3), i, np.uint8)).save(root / f"{i:02d}.png")
        (root / f"{i:02d}.txt").write_text(f"picture {i}")
    name, data_dir = f"folder_captions:{root}", str(tmp_path / "tfds")
    whole = sources.open_source(name, "train", data_dir, 8)
    train = sources.open_source(name, "train", data_dir, 8, validation_fraction=0.25)
    held_out = sources.open_source(name, "validation", data_dir, 8, validation_fraction=0.25)

    def files(source) -> set[str]:
        return {source[i]["file"].decode() for i in range(len(source))}

    assert len(whole) == 40 and 0 < len(held_out) < 40
    assert files(train) | files(held_out) == files(whole)
    assert not files(train) & files(held_out)
    with pytest.raises(ValueError, match=r"split 'validation'.*validation_fraction > 0"):
        sources.open_source(name, "validation", data_dir, 8)
    data = ml_collections.ConfigDict(
        dict(source=name, data_dir=data_dir, image_size=8, eval_split="validation")
    )
    with pytest.raises(ValueError, match="validation_fraction > 0"):
        sources.open_train_and_eval(data)
    data.validation_fraction = 0.25
    train_pair, eval_pair = sources.open_train_and_eval(data)
    assert files(train_pair) == files(train) and files(eval_pair) == files(held_out)
