"""CLIP model: paper-size shapes against transformers, logical axes, pooling, masks, bad input."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unclip_jax import sharding
from unclip_jax.models.clip import CLIP, VARIANTS, clip_config, count_params

TINY = clip_config("tiny")


@pytest.fixture(scope="module")
def tiny():
    model = CLIP(TINY)
    ids = jnp.zeros((2, TINY.text.context_length), jnp.int32)
    images = jnp.zeros((2, 32, 32, 3))
    variables = jax.jit(model.init)(jax.random.key(0), ids, images)
    text = jax.jit(lambda p, i, m: model.apply(p, i, m, method=CLIP.encode_text))
    return model, variables, text


def test_vit_l14_parameter_count_equals_transformers():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    hf_config = transformers.CLIPConfig(
        text_config=dict(
            hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12
        ),
        vision_config=dict(
            hidden_size=1024,
            intermediate_size=4096,
            num_attention_heads=16,
            num_hidden_layers=24,
            patch_size=14,
            image_size=224,
        ),
        projection_dim=768,
    )
    with torch.device("meta"):
        hf_model = transformers.CLIPModel(hf_config)
    expected = sum(p.numel() for p in hf_model.parameters())
    assert expected == 427_616_513
    assert count_params(clip_config("L/14")) == expected


def test_variant_shapes():
    assert count_params(VARIANTS["B/32"]) == 151_277_313  # OpenAI ViT-B/32
    l336 = VARIANTS["L/14-336"]
    assert l336.vision.image_size == 336 and l336.projection_dim == 768
    assert VARIANTS["H/14"].projection_dim == 1024 and VARIANTS["H/14"].vision.width == 1280
    with pytest.raises(ValueError, match=r"variant must be one of.*'L/15'"):
        clip_config("L/15")


def test_every_parameter_has_logical_axes(tiny):
    _, variables, _ = tiny
    boxed = jax.tree.leaves(variables, is_leaf=lambda x: isinstance(x, nn.Partitioned))
    assert boxed and all(isinstance(leaf, nn.Partitioned) for leaf in boxed)
    for leaf in boxed:
        assert len(leaf.names) == leaf.value.ndim


def test_outputs_and_pooling_at_end_of_text(tiny):
    _, variables, text = tiny
    length, eos = TINY.text.context_length, TINY.text.eos_token_id
    ids = np.random.RandomState(0).randint(3, 100, size=(2, length))
    ids[:, 5] = eos
    mask = (np.arange(length) <= 5)[None].repeat(2, 0)
    embedding, aux = text(variables, jnp.asarray(ids), jnp.asarray(mask))
    assert embedding.shape == (2, TINY.projection_dim)
    assert aux["hidden_states"].shape == (2, length, TINY.text.width)
    np.testing.assert_allclose(aux["pooled"], aux["hidden_states"][:, 5], atol=1e-6)
    # Causal attention: tokens after the end-of-text token cannot change the embedding.
    changed = ids.copy()
    changed[:, 6:] = 7
    other, _ = text(variables, jnp.asarray(changed), jnp.asarray(mask))
    np.testing.assert_allclose(other, embedding, atol=1e-6)


def test_legacy_argmax_pooling(tiny):
    _, variables, _ = tiny
    legacy = CLIP(dataclasses.replace(TINY, text=dataclasses.replace(TINY.text, pooling="argmax")))
    ids = np.full((1, 8), 3)
    ids[0, 2], ids[0, 4] = TINY.text.eos_token_id, 500  # the largest id is at position 4
    _, aux = legacy.apply(variables, jnp.asarray(ids), method=CLIP.encode_text)
    np.testing.assert_allclose(aux["pooled"], aux["hidden_states"][:, 4], atol=1e-6)


def test_logits_and_temperature_cap(tiny):
    model, variables, _ = tiny
    ids = jnp.asarray(np.random.RandomState(1).randint(1, 100, size=(3, 8)))
    images = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
    params = jax.tree.map(lambda x: x, nn.unbox(variables))
    params["params"]["logit_scale"] = jnp.asarray(9.0)  # exp(9) > 100: capped
    logits, aux = model.apply(params, ids, images)
    image = aux["image_embeds"] / jnp.linalg.norm(aux["image_embeds"], axis=-1, keepdims=True)
    text = aux["text_embeds"] / jnp.linalg.norm(aux["text_embeds"], axis=-1, keepdims=True)
    np.testing.assert_allclose(logits, 100.0 * image @ text.T, rtol=1e-5, atol=1e-5)
    assert aux["image_hidden_states"].shape == (2, 1 + (32 // 8) ** 2, TINY.vision.width)


def test_bfloat16_compute_stays_close(tiny):
    _, variables, _ = tiny
    images = jax.random.normal(jax.random.key(2), (2, 32, 32, 3))
    f32 = CLIP(TINY).apply(variables, images, method=CLIP.encode_image)[0]
    bf16 = CLIP(TINY, dtype=jnp.bfloat16).apply(variables, images, method=CLIP.encode_image)[0]
    assert bf16.dtype == jnp.float32
    cosine = (
        jnp.sum(f32 * bf16, -1) / jnp.linalg.norm(f32, axis=-1) / jnp.linalg.norm(bf16, axis=-1)
    )
    assert float(cosine.min()) > 0.99


def test_bad_inputs(tiny):
    model, variables, _ = tiny
    encode = lambda x: model.apply(variables, x, method=CLIP.encode_image)
    with pytest.raises(ValueError, match=r"images must be \[batch, 32, 32, 3\].*\(1, 64, 64, 3\)"):
        encode(jnp.zeros((1, 64, 64, 3)))
    with pytest.raises(ValueError, match=r"\(1, 32, 32, 1\)"):
        encode(jnp.zeros((1, 32, 32, 1)))
    with pytest.raises(ValueError, match=r"length <= 16.*\(1, 17\)"):
        model.apply(variables, jnp.zeros((1, 17), jnp.int32), method=CLIP.encode_text)
    with pytest.raises(ValueError, match="act must be one of"):
        dataclasses.replace(TINY, text=dataclasses.replace(TINY.text, act="relu6"))


def test_activations_are_constrained_only_under_activation_rules(tiny):
    model, variables, _ = tiny
    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    ids = jnp.asarray(np.random.RandomState(2).randint(1, 100, size=(4, 8)))
    images = jax.random.normal(jax.random.key(3), (4, 32, 32, 3))
    apply = jax.jit(lambda v, i, x: model.apply(v, i, x)[0])
    with sharding.activation_rules(mesh, sharding.DEFAULT_RULES):
        text = apply.lower(variables, ids, images).as_text()
        constrained = apply(variables, ids, images)
    found = [line for line in text.splitlines() if "sdy.sharding_constraint" in line]
    batch = '[{"data", "fsdp"}, {}'
    # Per block of the two towers (2 + 2): q, k, v and attended [B, L, H, Dh]; the MLP hidden
    # layer [B, L, M]; the attention output, the MLP input and the block output [B, L, D].
    assert sum(f'{batch}, {{"tensor"}}, {{}}]>' in line for line in found) == 4 * 4
    assert sum(f'{batch}, {{"tensor"}}]>' in line for line in found) == 4
    assert sum(f"{batch}, {{}}]>" in line for line in found) == 4 * 3
    assert "sharding_constraint" not in apply.lower(variables, ids, images).as_text()
    np.testing.assert_allclose(constrained, apply(variables, ids, images), atol=1e-5)
