"""`dot_product_attention` against jax.nn's on the same inputs: outputs and gradients, masks,
causal masking, fully masked rows, bfloat16; and the [B, H, T, S] probabilities not saved."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unclip_jax.nn.softmax_attention import dot_product_attention

B, T, S, H, DH = 2, 12, 17, 3, 8


def _inputs(dtype=jnp.float32, queries=T, keys=S):
    k = jax.random.split(jax.random.key(0), 4)
    query = jax.random.normal(k[0], (B, queries, H, DH), dtype)
    key = jax.random.normal(k[1], (B, keys, H, DH), dtype)
    value = jax.random.normal(k[2], (B, keys, H, DH), dtype)
    cotangent = jax.random.normal(k[3], (B, queries, H, DH), dtype)
    return query, key, value, cotangent


def _padding_mask(keys=S):
    kept = np.ones((B, keys), bool)
    kept[0, 2:7] = False  # row 0 ignores five keys
    kept[1, :] = False  # row 1 ignores every key: uniform attention
    return jnp.asarray(kept)[:, None, None, :]


def _value_and_grads(attention, query, key, value, cotangent, **kwargs):
    def loss(q, k, v):
        return jnp.sum(attention(q, k, v, **kwargs).astype(jnp.float32) * cotangent)

    out = attention(query, key, value, **kwargs)
    return out, jax.grad(loss, argnums=(0, 1, 2))(query, key, value)


@pytest.mark.parametrize(
    "case",
    [
        dict(),
        dict(mask=_padding_mask()),
        dict(is_causal=True, keys=T),
        dict(mask=_padding_mask(T), is_causal=True, keys=T),
    ],
    ids=["unmasked", "padding", "causal", "padding_and_causal"],
)
def test_outputs_and_gradients_equal_jax_nn(case):
    case = dict(case)
    query, key, value, cotangent = _inputs(keys=case.pop("keys", S))
    ours, our_grads = _value_and_grads(dot_product_attention, query, key, value, cotangent, **case)
    theirs, their_grads = _value_and_grads(
        jax.nn.dot_product_attention, query, key, value, cotangent, **case
    )
    np.testing.assert_allclose(ours, theirs, atol=2e-6, rtol=1e-5)
    for name, a, b in zip(("query", "key", "value"), our_grads, their_grads, strict=True):
        np.testing.assert_allclose(a, b, atol=5e-6, rtol=1e-5, err_msg=name)


def test_a_fully_masked_row_attends_uniformly():
    query, key, value, _ = _inputs()
    out = dot_product_attention(query, key, value, mask=_padding_mask())
    np.testing.assert_allclose(out[1], jnp.broadcast_to(value[1].mean(0), out[1].shape), atol=1e-6)


def test_bfloat16_is_as_close_to_float32_as_jax_nn():
    query, key, value, cotangent = _inputs()
    mask = _padding_mask()
    exact, exact_grads = _value_and_grads(
        dot_product_attention, query, key, value, cotangent, mask=mask
    )
    low = [x.astype(jnp.bfloat16) for x in (query, key, value, cotangent)]

    def errors(attention):  # (output's, gradients') largest error against float32
        out, grads = _value_and_grads(attention, *low, mask=mask)
        assert out.dtype == jnp.bfloat16 and all(g.dtype == jnp.bfloat16 for g in grads)
        grad_errors = (
            jnp.max(jnp.abs(g.astype(jnp.float32) - e))
            for g, e in zip(grads, exact_grads, strict=True)
        )
        return float(jnp.max(jnp.abs(out.astype(jnp.float32) - exact))), max(
            map(float, grad_errors)
        )

    ours, theirs = errors(dot_product_attention), errors(jax.nn.dot_product_attention)
    assert ours[0] <= 1.5 * theirs[0] and ours[1] <= 1.5 * theirs[1], (ours, theirs)


def test_the_backward_pass_saves_no_probabilities():
    query, key, value, _ = _inputs()
    mask = _padding_mask()
    probabilities = B * H * T * S

    def largest_saved(attention):
        _, vjp = jax.vjp(lambda q, k, v: attention(q, k, v, mask=mask), query, key, value)
        return max(x.size for x in jax.tree.leaves(vjp))

    assert largest_saved(jax.nn.dot_product_attention) == probabilities
    assert largest_saved(dot_product_attention) == B * S * H * DH  # the keys, the values


def test_mismatched_shapes_are_refused_in_one_line():
    query, key, value, _ = _inputs()
    with pytest.raises(
        ValueError, match=r"query \[B, T, H, Dh\].*got \(2, 12, 3, 8\), \(2, 17, 3, 4\)"
    ):
        dot_product_attention(query, key[..., :4], value[..., :4])
