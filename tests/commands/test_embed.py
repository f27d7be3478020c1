"""`unclip embed`: shards of CLIP embeddings that match the model, and resumption keyed by
example (any shard size, no example repeated or skipped)."""

import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unclip_jax.convert.hf_clip import save_clip
from unclip_jax.data import shapes_captions
from unclip_jax.data.embedding_shards import EmbeddingShards
from unclip_jax.models.clip import CLIP, clip_config
from unclip_jax.models.clip_preprocessing import clip_preprocess
from unclip_jax.text.bpe import train_bpe
from unclip_jax.train.clip_embeddings import embed_source


def _clip_and_source(tmp_path):
    """A tiny CLIP checkpoint with a BPE tokenizer and 10 shapes examples (4 captions each)."""
    builder_config = next(c for c in shapes_captions.CONFIGS if c.name == "32px")
    source = [shapes_captions.make_example(builder_config, "train", i) for i in range(10)]
    tokenizer = train_bpe([c for e in source for c in e["captions"]], 128, 16)
    config = clip_config("tiny")
    model = CLIP(config)
    params = jax.jit(model.init)(
        jax.random.key(0), jnp.zeros((1, 16), jnp.int32), jnp.zeros((1, 32, 32, 3))
    )
    params = nn.unbox(jax.device_get(params))
    save_clip(tmp_path / "clip", config, params)
    tokenizer.save(tmp_path / "clip" / "tokenizer")
    return model, params, tokenizer, source


def test_embed_shards_match_the_model_and_resume(tmp_path):
    model, params, tokenizer, source = _clip_and_source(tmp_path)
    out = tmp_path / "emb"
    kwargs = dict(batch_size=3, shard_size=4, token_states=True, dtype="float32")
    assert embed_source(tmp_path / "clip", source, out, **kwargs) == 3
    shards = EmbeddingShards(out)
    assert len(shards) == 4 * len(source)  # four captions per image
    row = shards[5]  # image 1, caption 1
    image = clip_preprocess(jnp.asarray(source[1]["image"])[None], 32)
    expected_image = model.apply(params, image, method=CLIP.encode_image)[0][0]
    np.testing.assert_allclose(row["image_embedding"], expected_image, atol=1e-5)
    ids, mask = tokenizer([source[1]["captions"][1]])
    expected_text, aux = model.apply(params, ids, mask, method=CLIP.encode_text)
    np.testing.assert_allclose(row["text_embedding"], expected_text[0], atol=1e-5)
    np.testing.assert_allclose(row["token_states"], aux["hidden_states"][0], atol=1e-5)
    assert str(row["caption"]) == source[1]["captions"][1]

    assert embed_source(tmp_path / "clip", source, out, **kwargs) == 0  # all complete
    shutil.rmtree(sorted(out.glob("shard-*"))[1])  # examples [4, 8)
    assert embed_source(tmp_path / "clip", source, out, **kwargs) == 1
    np.testing.assert_array_equal(EmbeddingShards(out)[5]["text_tokens"], row["text_tokens"])


def test_resume_with_another_shard_size_neither_repeats_nor_skips(tmp_path):
    """A re-run with --shard_size 3 over shards of 4 writes nothing when all are complete, and
    only the missing examples (cut by the new size) when one is gone: every caption once."""
    _, _, _, source = _clip_and_source(tmp_path)
    out = tmp_path / "emb"
    captions = [c for e in source for c in e["captions"]]
    embed_source(tmp_path / "clip", source, out, batch_size=4, shard_size=4, dtype="float32")
    assert embed_source(tmp_path / "clip", source, out, batch_size=4, shard_size=3) == 0
    assert [str(r["caption"]) for r in EmbeddingShards(out)] == captions
    shutil.rmtree(sorted(out.glob("shard-*"))[1])  # examples [4, 8)
    written = embed_source(tmp_path / "clip", source, out, batch_size=4, shard_size=3)
    assert written == 2  # examples [4, 7) and [7, 8)
    assert [str(r["caption"]) for r in EmbeddingShards(out)] == captions


def test_shards_of_another_layout_or_data_set_are_named(tmp_path):
    from unclip_jax.train.clip_embeddings import missing_ranges, shard_name

    (tmp_path / "emb" / "shard-00000-00000").mkdir(parents=True)
    with pytest.raises(ValueError, match="shard-00000-00000"):
        missing_ranges(tmp_path / "emb", 10, 4)
    (tmp_path / "emb" / "shard-00000-00000").rmdir()
    (tmp_path / "emb" / shard_name(8, 12)).mkdir()
    with pytest.raises(ValueError, match=r"\[8, 12\).*10 examples"):
        missing_ranges(tmp_path / "emb", 10, 4)
    assert missing_ranges(tmp_path / "emb", 12, 3) == [(0, 3), (3, 6), (6, 8)]
