"""Classifier-free guidance: one batched model call per step and the right arithmetic."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unclip_jax.diffusion import guidance, samplers, schedules

B, D = 3, 4


def toy_model(params, x, t, conditioning):
    """Learned-variance-shaped output [N, 2D]: mean and variance channels both depend on the
    conditioning, so the tests see which half each channel comes from."""
    hidden = jnp.tanh(x @ params["w"] + conditioning["embedding"] + t[:, None] * 1e-3)
    return jnp.concatenate([hidden, 2.0 * hidden + 1.0], axis=-1)


@pytest.fixture(scope="module")
def setup():
    key = jax.random.key(0)
    params = {"w": jax.random.normal(key, (D, D))}
    cond = {"embedding": jax.random.normal(jax.random.fold_in(key, 1), (B, D))}
    null = {"embedding": jnp.zeros((B, D))}
    x = jax.random.normal(jax.random.fold_in(key, 2), (B, D))
    t = jnp.array([5, 50, 500])
    return params, cond, null, x, t


def test_scale_one_is_the_conditional_model_and_zero_the_unconditional(setup):
    params, cond, null, x, t = setup
    model = lambda x, t, c: toy_model(params, x, t, c)
    conditional, unconditional = model(x, t, cond), model(x, t, null)
    one = guidance.classifier_free_guidance(model, cond, null, 1.0, mean_channels=D)(x, t)
    zero = guidance.classifier_free_guidance(model, cond, null, 0.0, mean_channels=D)(x, t)
    np.testing.assert_allclose(one, conditional, atol=1e-6)
    np.testing.assert_allclose(zero[:, :D], unconditional[:, :D], atol=1e-6)
    np.testing.assert_allclose(zero[:, D:], conditional[:, D:], atol=1e-6)  # variance: cond


def test_batched_call_equals_two_separate_calls(setup):
    params, cond, null, x, t = setup
    model = lambda x, t, c: toy_model(params, x, t, c)
    scale = 4.0
    guided = guidance.classifier_free_guidance(model, cond, null, scale, mean_channels=D)(x, t)
    conditional, unconditional = model(x, t, cond), model(x, t, null)
    expected_mean = unconditional[:, :D] + scale * (conditional[:, :D] - unconditional[:, :D])
    np.testing.assert_allclose(guided[:, :D], expected_mean, atol=1e-5)
    np.testing.assert_allclose(guided[:, D:], conditional[:, D:], atol=1e-6)


def _sub_jaxprs(eqn):
    for value in eqn.params.values():
        for item in value if isinstance(value, tuple | list) else (value,):
            inner = getattr(item, "jaxpr", item)
            if hasattr(inner, "eqns"):
                yield inner


def _loop_bodies(jaxpr):
    """The bodies of every while/scan loop, at any depth."""
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "while":
            yield eqn.params["body_jaxpr"].jaxpr
        elif eqn.primitive.name == "scan":
            yield eqn.params["jaxpr"].jaxpr
        else:
            for inner in _sub_jaxprs(eqn):
                yield from _loop_bodies(inner)


def _calls_named(jaxpr, name):
    """Input shapes of every call of the jitted function `name`, at any depth."""
    found = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name in ("pjit", "jit") and eqn.params.get("name") == name:
            found.append([v.aval.shape for v in eqn.invars])
        for inner in _sub_jaxprs(eqn):
            found += _calls_named(inner, name)
    return found


@pytest.mark.parametrize("traced_schedule", [False, True])
def test_the_loop_body_calls_the_model_once_on_a_batch_of_2B(setup, traced_schedule):
    params, cond, null, x, _ = setup

    def guided_model(x, t, c):
        return toy_model(params, x, t, c)

    model = jax.jit(guided_model)  # a named call in the jaxpr
    schedule = schedules.make_schedule("cosine", 1000, 10)

    def chain(x, schedule):
        denoise = guidance.classifier_free_guidance(model, cond, null, 3.0, mean_channels=D)
        return samplers.ddim_sample(denoise, schedule, x, var_type="learned_range")

    if traced_schedule:
        closed = jax.make_jaxpr(chain)(x, schedule)
    else:
        closed = jax.make_jaxpr(lambda x: chain(x, schedule))(x)
    bodies = list(_loop_bodies(closed.jaxpr))
    assert len(bodies) == 1
    calls = _calls_named(bodies[0], "guided_model")
    assert len(calls) == 1, calls
    assert calls[0][0] == (2 * B, D)  # x of the one call: conditional and unconditional halves
    assert not _calls_named(closed.jaxpr, "guided_model")[1:]  # and none outside the loop
