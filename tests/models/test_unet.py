"""The U-Net family: decoder conditioning, null embeddings, caption masking, fully convolutional
upsampler, logical axis names, bf16 compute, and the paper-size parameter counts."""

import dataclasses
import importlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import logical_axes
import numpy as np
import pytest
from flax import traverse_util

from unclip_jax import sharding
from unclip_jax.models.caption_transformer import CaptionTransformerConfig
from unclip_jax.models.unet import (
    Decoder,
    UNet,
    UNetConfig,
    Upsampler,
    decoder_from_config,
    upsampler_from_config,
)

B, SIZE, IMG_DIM, LENGTH = 3, 16, 16, 6
UNET = UNetConfig(
    out_channels=6,
    base_channels=16,
    channel_mults=(1, 2),
    num_res_blocks=1,
    attention_levels=(1,),
    head_dim=8,
    groups=8,
)
CAPTION = CaptionTransformerConfig(vocab_size=32, max_length=8, width=16, layers=1, heads=2)
DECODER = Decoder(UNET, context_dim=16, caption_source="transformer", caption_transformer=CAPTION)


def _random_params(init, seed):
    """Random parameters of the shapes `init` would create, without compiling it.

    Kernels ~ N(0, 1/fan_in), norm scales ~ 1 + N(0, 0.3²), the rest (biases, null embeddings,
    zero-initialised output convolutions) ~ N(0, 0.3²), so that every path carries signal.
    """
    shapes = traverse_util.flatten_dict(nn.meta.unbox(jax.eval_shape(init)["params"]))
    rng = np.random.default_rng(seed)
    params = {}
    for path, leaf in shapes.items():
        noise = rng.normal(size=leaf.shape).astype(np.float32)
        if leaf.ndim >= 2:
            noise = noise / np.sqrt(np.prod(leaf.shape[:-1]))
        else:
            noise = noise * 0.3 + (1.0 if path[-1] == "scale" else 0.0)
        params[path] = jnp.asarray(noise, jnp.float32)
    return traverse_util.unflatten_dict(params)


@pytest.fixture(scope="module")
def decoder():
    rng = np.random.default_rng(0)
    inputs = dict(
        x=jnp.asarray(rng.normal(size=(B, SIZE, SIZE, 3)), jnp.float32),
        t=jnp.asarray([1, 500, 999]),
        image_embed=jnp.asarray(rng.normal(size=(B, IMG_DIM)), jnp.float32),
        caption_ids=jnp.asarray(rng.integers(1, 32, size=(B, LENGTH))),
        caption_mask=jnp.asarray(np.arange(LENGTH)[None] < np.array([[6], [3], [1]])),
        drop_image=jnp.zeros((B,), bool),
        drop_caption=jnp.zeros((B,), bool),
    )
    params = _random_params(lambda: DECODER.init(jax.random.key(0), **inputs), 1)
    apply = jax.jit(lambda p, kw: DECODER.apply({"params": p}, **kw))
    return params, apply, inputs


def _changed(a, b):
    return float(jnp.max(jnp.abs(a - b)))


def test_decoder_output_shape_is_learned_variance(decoder):
    params, apply, inputs = decoder
    out = apply(params, inputs)
    assert out.shape == (B, SIZE, SIZE, 6)
    assert bool(jnp.all(jnp.isfinite(out)))


def test_output_changes_with_image_embedding_and_caption(decoder):
    params, apply, inputs = decoder
    base = apply(params, inputs)
    other_image = apply(params, {**inputs, "image_embed": inputs["image_embed"][::-1]})
    other_caption = apply(params, {**inputs, "caption_ids": (inputs["caption_ids"] + 1) % 32})
    for out in (other_image, other_caption):
        assert _changed(out, base) > 1e-3


def test_padded_caption_positions_do_not_affect_output(decoder):
    params, apply, inputs = decoder
    padded = ~inputs["caption_mask"]
    ids = jnp.where(padded, (inputs["caption_ids"] + 7) % 32, inputs["caption_ids"])
    assert bool(jnp.any(ids != inputs["caption_ids"]))
    assert _changed(apply(params, {**inputs, "caption_ids": ids}), apply(params, inputs)) < 1e-5


def test_dropped_image_uses_the_null_embedding(decoder):
    params, apply, inputs = decoder
    dropped = {**inputs, "drop_image": jnp.ones((B,), bool)}
    out = apply(params, dropped)
    null = jnp.broadcast_to(params["conditioning"]["null_image_embed"], (B, IMG_DIM))
    np.testing.assert_allclose(out, apply(params, {**inputs, "image_embed": null}), atol=1e-5)
    assert _changed(out, apply(params, inputs)) > 1e-3
    moved = apply(params, {**dropped, "image_embed": inputs["image_embed"] * 3.0})
    assert _changed(moved, out) < 1e-5


def test_dropped_caption_uses_the_null_embedding_and_ignores_the_caption(decoder):
    params, apply, inputs = decoder
    drop = jnp.asarray([True, False, True])
    dropped = {**inputs, "drop_caption": drop}
    out = apply(params, dropped)
    other = apply(params, {**dropped, "caption_ids": (inputs["caption_ids"] + 3) % 32})
    assert _changed(out[0], other[0]) < 1e-5 and _changed(out[2], other[2]) < 1e-5
    assert _changed(out[1], other[1]) > 1e-3
    moved = jax.tree.map(lambda p: p, params)
    moved["conditioning"]["null_caption_embed"] = params["conditioning"]["null_caption_embed"] + 1
    shifted = apply(moved, dropped)
    assert _changed(shifted[0], out[0]) > 1e-3
    assert _changed(shifted[1], out[1]) < 1e-6


def test_every_parameter_has_logical_axis_names_that_map_to_the_mesh():
    boxed = jax.eval_shape(
        lambda: DECODER.init(
            jax.random.key(0),
            jnp.zeros((1, SIZE, SIZE, 3)),
            jnp.zeros((1,)),
            jnp.zeros((1, IMG_DIM)),
            caption_ids=jnp.zeros((1, LENGTH), jnp.int32),
        )
    )["params"]
    assert not logical_axes.unnamed(boxed)
    specs = logical_axes.mesh_shardings(boxed)
    kernel = specs["unet"]["down_1_0"]["conv1"]["kernel"].spec
    assert tuple(kernel) == (None, None, None, sharding.FSDP)


def test_bfloat16_compute_keeps_float32_parameters(decoder):
    params, _, inputs = decoder
    model = DECODER.clone(dtype=jnp.bfloat16)
    out = jax.jit(lambda p, kw: model.apply({"params": p}, **kw))(params, inputs)
    assert out.dtype == jnp.bfloat16 and bool(jnp.all(jnp.isfinite(out)))
    assert {p.dtype for p in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}


def test_upsampler_trained_on_crops_runs_at_full_size():
    config = UNetConfig(
        out_channels=3,
        base_channels=16,
        channel_mults=(1, 2),
        num_res_blocks=1,
        attention_levels=(),
        mid_attention=False,
        groups=8,
    )
    model = Upsampler(config, noise_level_conditioning=True)
    rng = np.random.default_rng(0)
    crop, low_crop = jnp.zeros((2, 8, 8, 3)), jnp.zeros((2, 2, 2, 3))
    t = jnp.asarray([10, 900])
    params = _random_params(
        lambda: model.init(jax.random.key(0), crop, low_crop, t, jnp.zeros((2,))), 1
    )
    full = jnp.asarray(rng.normal(size=(2, 32, 32, 3)), jnp.float32)
    low = jnp.asarray(rng.normal(size=(2, 8, 8, 3)), jnp.float32)
    apply = jax.jit(lambda p, x, lo, level: model.apply({"params": p}, x, lo, t, level))
    out = apply(params, full, low, jnp.zeros((2,)))
    assert out.shape == (2, 32, 32, 3) and bool(jnp.all(jnp.isfinite(out)))
    assert _changed(apply(params, full, low, jnp.full((2,), 250.0)), out) > 1e-3
    assert _changed(apply(params, full, -low, jnp.zeros((2,))), out) > 1e-3


def test_rematerialised_unet_has_the_same_parameters_and_gradients():
    config = dataclasses.replace(UNET, channel_mults=(1,), attention_levels=(), mid_attention=False)
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.normal(size=(2, 8, 8, 3)), jnp.float32)
    t = jnp.asarray([4, 600])
    plain, checkpointed = UNet(config), UNet(dataclasses.replace(config, remat="full"))
    params = _random_params(lambda: plain.init(jax.random.key(0), x, t), 3)

    jaxpr = str(jax.make_jaxpr(lambda p: checkpointed.apply({"params": p}, x, t))(params))
    assert jaxpr.count("remat") == 5  # the 5 residual blocks of a one-level U-Net

    def grads(model):
        return jax.jit(jax.grad(lambda p: jnp.sum(model.apply({"params": p}, x, t) ** 2)))(params)

    for a, b in zip(
        jax.tree.leaves(grads(plain)), jax.tree.leaves(grads(checkpointed)), strict=True
    ):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-4 * float(jnp.max(jnp.abs(a))))


def test_image_only_decoder_has_no_caption_parameters():
    model = Decoder(UNET, context_dim=16, caption_source="none")
    shapes = jax.eval_shape(
        model.init,
        jax.random.key(0),
        jnp.zeros((1, SIZE, SIZE, 3)),
        jnp.zeros((1,)),
        jnp.zeros((1, IMG_DIM)),
    )["params"]
    assert set(shapes) == {"conditioning", "unet"}
    assert set(shapes["conditioning"]) == {"null_image_embed", "image_to_time", "image_to_tokens"}


def test_errors_name_the_bad_value():
    with pytest.raises(ValueError, match="divisible by groups"):
        UNetConfig(base_channels=20, groups=8)
    with pytest.raises(ValueError, match="remat must be one of"):
        UNetConfig(remat="sometimes")
    with pytest.raises(ValueError, match="attention_levels"):
        UNetConfig(channel_mults=(1, 2), attention_levels=(2,))
    with pytest.raises(ValueError, match="caption_states"):
        clip = Decoder(UNET, context_dim=16, caption_source="clip")
        jax.eval_shape(
            clip.init,
            jax.random.key(0),
            jnp.zeros((1, SIZE, SIZE, 3)),
            jnp.zeros((1,)),
            jnp.zeros((1, IMG_DIM)),
            caption_ids=jnp.zeros((1, LENGTH), jnp.int32),
        )
    with pytest.raises(ValueError, match="multiples of 2"):
        jax.eval_shape(
            DECODER.init,
            jax.random.key(0),
            jnp.zeros((1, 15, 15, 3)),
            jnp.zeros((1,)),
            jnp.zeros((1, IMG_DIM)),
            caption_ids=jnp.zeros((1, LENGTH), jnp.int32),
        )


def _count(tree) -> int:
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


@pytest.mark.parametrize(
    ("name", "target"),
    [("decoder_paper", 3.5e9), ("upsampler256_paper", 700e6), ("upsampler1024_paper", 300e6)],
)
def test_paper_configs_have_table_3_sizes(name, target):
    config = importlib.import_module(f"configs.{name}").get_config()
    size, embed = config.get("image_size"), config.get("image_embed_dim")
    if name == "decoder_paper":
        model = decoder_from_config(config.model)
        length = config.model.caption_transformer.max_length
        init = lambda: model.init(
            jax.random.key(0),
            jnp.zeros((1, size, size, 3)),
            jnp.zeros((1,)),
            jnp.zeros((1, embed)),
            caption_ids=jnp.zeros((1, length), jnp.int32),
        )
    else:
        model = upsampler_from_config(config.model)
        factor = config.high_res // config.low_res
        init = lambda: model.init(
            jax.random.key(0),
            jnp.zeros((1, 64, 64, 3)),
            jnp.zeros((1, 64 // factor, 64 // factor, 3)),
            jnp.zeros((1,)),
        )
    count = _count(jax.eval_shape(init))
    assert abs(count - target) / target < 0.1, f"{name}: {count / 1e6:.0f}M vs {target / 1e6:.0f}M"


def test_activations_are_constrained_only_under_activation_rules(decoder):
    params, apply, inputs = decoder
    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    inputs = {k: jnp.concatenate([v, v[:1]]) for k, v in inputs.items()}  # B = 4
    with sharding.activation_rules(mesh, sharding.DEFAULT_RULES):
        text = apply.lower(params, inputs).as_text()
        constrained = apply(params, inputs)
    found = [line for line in text.splitlines() if "sdy.sharding_constraint" in line]
    batch = '[{"data", "fsdp"}, {}'
    # The outputs [B, H, W, C] of 10 residual and 4 attention blocks, of every convolution (2
    # per residual block, 5 skip convolutions, the first and the last), channels over tensor;
    # the caption block's MLP hidden layer [B, L, M]; q, k, v (and extra k, v in the U-Net) and
    # attended values [B, L, H, Dh], heads over tensor.
    assert sum(f'{batch}, {{}}, {{"tensor"}}]>' in line for line in found) == 14 + 20 + 5 + 2
    assert sum(f'{batch}, {{"tensor"}}]>' in line for line in found) == 1
    assert sum(f'{batch}, {{"tensor"}}, {{}}]>' in line for line in found) == 4 * 6 + 4
    assert "sharding_constraint" not in apply.lower(params, inputs).as_text()
    np.testing.assert_allclose(constrained, apply(params, inputs), atol=1e-5)
