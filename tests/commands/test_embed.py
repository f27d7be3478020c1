"""`unclip embed`: shards of CLIP embeddings that match the model, and resumption."""

import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from unclip_jax.commands.embedding import embed_source, shard_name
from unclip_jax.convert.hf_clip import save_clip
from unclip_jax.data import shapes_captions
from unclip_jax.data.embedding_shards import EmbeddingShards
from unclip_jax.models.clip import CLIP, clip_config
from unclip_jax.models.clip_preprocessing import clip_preprocess
from unclip_jax.text.bpe import train_bpe


def test_embed_shards_match_the_model_and_resume(tmp_path):
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
    shutil.rmtree(out / shard_name(1))
    assert embed_source(tmp_path / "clip", source, out, **kwargs) == 1
    np.testing.assert_array_equal(EmbeddingShards(out)[5]["text_tokens"], row["text_tokens"])
