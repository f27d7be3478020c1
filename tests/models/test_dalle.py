"""The DALL·E transformer: each attention mask's dependencies against the module docstring's
definition, cached decoding (and completion from kept rows) equal to teacher forcing for every
pattern, the 1/8 – 7/8 loss weighting, and the 12B parameter count of the paper config."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from unclip_jax.models import dalle

GRID, TEXT = 4, 5


def tiny(pattern: str, depth: int = 1, **fields) -> dalle.DalleConfig:
    sizes = dict(text_vocab_size=20, text_length=TEXT, image_vocab_size=12, grid=GRID)
    shape = dict(width=32, depth=depth, num_heads=2, head_dim=16, conv_kernel=3)
    return dalle.DalleConfig(**sizes, **{**shape, **fields}, pattern=pattern)


def inputs(batch: int = 2, seed: int = 0):
    rng = np.random.default_rng(seed)
    text = rng.integers(0, 20, (batch, TEXT))
    mask = np.arange(TEXT)[None] < np.array([[3], [5]])[:batch]
    codes = rng.integers(0, 12, (batch, GRID * GRID))
    return jnp.asarray(text), jnp.asarray(mask), jnp.asarray(codes)


def documented(kind: str, a: int, b: int) -> bool:
    """The module docstring's rule: may the query holding code a see the code b?"""
    if b > a:
        return False
    row_a, col_a, row_b, col_b = a // GRID, a % GRID, b // GRID, b % GRID
    return {
        "dense": True,
        "row": a - b < GRID,
        "column": (a - b) % GRID == 0,
        "conv": row_a - row_b <= 1 and abs(col_a - col_b) <= 1,  # kernel 3
    }[kind]


@pytest.mark.parametrize("kind", dalle.MASKS)
def test_one_layer_sees_exactly_its_mask(kind):
    model = dalle.DalleTransformer(tiny(kind))
    text, mask, codes = inputs(batch=1)
    params = jax.jit(model.init)(jax.random.key(0), text, mask, codes)
    fed = GRID * GRID - 1
    # row 0: the codes as drawn; row 1 + b: code b changed; last row: a caption token changed
    varied = jnp.tile(codes, (fed + 2, 1))
    varied = varied.at[1 + jnp.arange(fed), jnp.arange(fed)].add(1) % 12
    texts = jnp.tile(text, (fed + 2, 1)).at[-1, 2].add(1) % 20
    logits = jax.jit(model.apply)(params, texts, jnp.tile(mask, (fed + 2, 1)), varied)[1]
    moved = np.abs(np.asarray(logits - logits[:1])).max(axis=-1) > 1e-6  # [fed + 2, N]
    for b in range(fed):
        for a in range(fed):
            # position L + a holds code a and gives image_logits[:, a + 1]
            assert moved[1 + b, a + 1] == documented(kind, a, b), (kind, a, b)
    assert np.all(moved[-1])  # every image position sees the whole caption


@pytest.mark.parametrize("pattern", ["sparse", "dense"])  # sparse: row, column and conv layers
def test_cached_decoding_and_completion_equal_teacher_forcing(pattern):
    config = tiny(pattern, depth=6)
    model = dalle.DalleTransformer(config)
    text, mask, codes = inputs()
    params = jax.jit(model.init)(jax.random.key(1), text, mask, codes)
    _, expected = jax.jit(model.apply)(params, text, mask, codes)  # [B, N, V]
    prefill = jax.jit(lambda *a: model.apply(params, *a, method=model.prefill))

    logits, cache = prefill(text, mask)
    got = [logits]
    step = jax.jit(lambda c, code, i: model.apply(params, c, code, i, method=model.decode_step))
    chunk = 5  # a cache segment for every 5 codes fed, the last one shorter
    for index in range(GRID * GRID - 1):
        if index % chunk == 0:
            cache = dalle.grow_cache(cache, min(chunk, GRID * GRID - 1 - index))
        logits, cache = step(cache, codes[:, index], jnp.int32(index))
        got.append(logits)
    assert len(cache[0]) == 2  # the positions before the last chunk, and the chunk
    np.testing.assert_allclose(np.stack(got, axis=1), expected, atol=1e-5)

    kept = 2 * GRID  # complete after two kept rows
    logits, _ = prefill(text, mask, codes[:, :kept])
    np.testing.assert_allclose(logits, expected[:, kept], atol=1e-5)


def test_the_transposed_decoding_head_gives_the_heads_logits():
    config = tiny("sparse")
    model = dalle.DalleTransformer(config)
    text, mask, codes = inputs()
    params = jax.jit(model.init)(jax.random.key(3), text, mask, codes)
    _, cache = model.apply(params, text, mask, method=model.prefill)
    cache = dalle.grow_cache(cache, 1)
    step = functools.partial(model.apply, params, cache, codes[:, 0], 0, method=model.decode_step)
    head = dalle.decoding_head(params["params"])
    assert head[0].shape == (config.image_vocab_size, config.width)
    np.testing.assert_allclose(step(head=head)[0], step()[0], atol=1e-5)


def test_layer_schedule_of_the_paper():
    masks = dalle.DalleConfig(depth=10).layer_masks()
    assert masks == ["row", "row", "column", "row", "row", "row", "column", "row", "row", "conv"]


def test_loss_weights_text_one_eighth_and_image_seven_eighths():
    config = tiny("sparse")
    model = dalle.DalleTransformer(config)
    text, mask, codes = inputs()
    params = jax.jit(model.init)(jax.random.key(2), text, mask, codes)
    text_logits, image_logits = model.apply(params, text, mask, codes)
    targets = dalle.padded_text(config, text, mask)[:, 1:]
    loss, metrics = dalle.dalle_loss(text_logits, image_logits, targets, codes)
    text_ce = optax.softmax_cross_entropy_with_integer_labels(text_logits, targets).mean()
    image_ce = optax.softmax_cross_entropy_with_integer_labels(image_logits, codes).mean()
    assert float(loss) == pytest.approx(float(text_ce) / 8 + 7 * float(image_ce) / 8, rel=1e-6)
    assert float(metrics["text_loss"]) == pytest.approx(float(text_ce), rel=1e-6)
    # padded positions are their own tokens: vocabulary size + position
    assert list(np.asarray(targets[0])) == [int(text[0, 1]), int(text[0, 2]), 23, 24]


def test_the_paper_config_has_12b_parameters():
    config = dalle.DalleConfig()
    model = dalle.DalleTransformer(config)
    shapes = jax.eval_shape(
        model.init,
        jax.random.key(0),
        jnp.zeros((1, config.text_length), jnp.int32),
        jnp.ones((1, config.text_length), bool),
        jnp.zeros((1, config.num_codes), jnp.int32),
    )
    count = sum(np.prod(x.shape) for x in jax.tree.leaves(shapes))
    assert count == pytest.approx(12e9, rel=0.03), count


def test_bad_configs_are_refused_by_name():
    with pytest.raises(ValueError, match="pattern must be one of"):
        tiny("strided")
    with pytest.raises(ValueError, match="conv_kernel must be an odd number"):
        tiny("sparse", conv_kernel=4)
