import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, stats

from unclip_jax.diffusion import gaussian, losses, schedules


def test_normal_kl_matches_numeric_integral():
    rng = np.random.default_rng(0)
    for _ in range(5):
        m1, m2 = rng.normal(size=2)
        lv1, lv2 = rng.uniform(-2, 1, size=2)
        p, q = stats.norm(m1, np.exp(lv1 / 2)), stats.norm(m2, np.exp(lv2 / 2))
        integrand = lambda x, p=p, q=q: p.pdf(x) * (p.logpdf(x) - q.logpdf(x))
        numeric, _ = integrate.quad(integrand, -30, 30)
        ours = losses.normal_kl(*(jnp.float32(v) for v in (m1, lv1, m2, lv2)))
        assert float(ours) == pytest.approx(numeric, abs=1e-5)


def test_discretized_log_likelihood_matches_scipy():
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, size=64) / 127.5 - 1.0
    x[:3] = [-1.0, 1.0, 0.0]
    mean = np.clip(x + rng.normal(scale=0.05, size=64), -1, 1)
    log_scale = rng.uniform(-4, -1, size=64)
    scale = np.exp(log_scale)
    upper = np.where(x > 0.999, np.inf, x + 1 / 255)
    lower = np.where(x < -0.999, -np.inf, x - 1 / 255)
    reference = np.log(stats.norm.cdf(upper, mean, scale) - stats.norm.cdf(lower, mean, scale))
    with jax.enable_x64(True):
        ours = losses.discretized_gaussian_log_likelihood(
            jnp.asarray(x), jnp.asarray(mean), jnp.asarray(log_scale)
        )
    np.testing.assert_allclose(np.asarray(ours), reference, rtol=0, atol=1e-5)


@pytest.mark.parametrize("mean_type", ["eps", "x0", "v"])
def test_mse_is_zero_for_the_exact_target(mean_type):
    schedule = schedules.make_schedule("cosine", 1000)
    key_x, key_n = jax.random.split(jax.random.key(0))
    x0 = jax.random.uniform(key_x, (4, 8, 8, 3), minval=-1, maxval=1)
    noise = jax.random.normal(key_n, x0.shape)
    index = jnp.array([0, 10, 500, 999])
    x_t = gaussian.q_sample(schedule, x0, index, noise)
    target = {"eps": noise, "x0": x0, "v": gaussian.v_from_x0_eps(schedule, x0, index, noise)}
    result = losses.diffusion_loss(
        schedule, target[mean_type], x0, x_t, index, noise, mean_type=mean_type
    )
    np.testing.assert_allclose(np.asarray(result["loss"]), 0.0, atol=1e-6)
    # And the implied x0 is the true one (away from t = T−1, where ε → x0 divides by √ᾱ ≈ 0).
    implied = gaussian.PREDICTIONS[mean_type](schedule, x_t, index, target[mean_type])
    np.testing.assert_allclose(np.asarray(implied)[:3], np.asarray(x0)[:3], atol=1e-4)


def test_hybrid_loss_trains_variance_only_through_vlb():
    schedule = schedules.make_schedule("linear", 1000)
    key = jax.random.key(2)
    x0 = jax.random.uniform(key, (3, 4, 4, 3), minval=-1, maxval=1)
    noise = jax.random.normal(jax.random.fold_in(key, 1), x0.shape)
    index = jnp.array([0, 1, 700])
    x_t = gaussian.q_sample(schedule, x0, index, noise)
    output = jnp.concatenate([noise + 0.1, jnp.zeros_like(noise)], axis=-1)

    def part(name):
        return lambda out: jnp.sum(
            losses.diffusion_loss(schedule, out, x0, x_t, index, noise, var_type="learned_range")[
                name
            ]
        )

    vlb_grad = jax.grad(part("vlb"))(output)
    assert np.all(np.asarray(vlb_grad[..., :3]) == 0.0)
    assert np.any(np.asarray(vlb_grad[..., 3:]) != 0.0)
    result = losses.diffusion_loss(
        schedule, output, x0, x_t, index, noise, var_type="learned_range"
    )
    np.testing.assert_allclose(
        np.asarray(result["loss"]),
        np.asarray(result["mse"] + 1e-3 * 1000 * result["vlb"]),
        rtol=1e-6,
    )
    assert np.all(np.isfinite(np.asarray(result["vlb"])))


def test_vlb_is_zero_for_the_true_posterior_mean_and_variance():
    schedule = schedules.make_schedule("linear", 1000)
    key = jax.random.key(3)
    x0 = jax.random.uniform(key, (2, 4, 4, 3), minval=-1, maxval=1)
    noise = jax.random.normal(jax.random.fold_in(key, 1), x0.shape)
    index = jnp.array([300, 900])
    x_t = gaussian.q_sample(schedule, x0, index, noise)
    # ε output that implies the true x0, with v = −1 (variance β̃ = the posterior's).
    output = jnp.concatenate([noise, -jnp.ones_like(noise)], axis=-1)
    options = gaussian.ReverseOptions(var_type="learned_range")
    step = gaussian.p_mean_variance(schedule, output, x_t, index, options)
    np.testing.assert_allclose(
        np.asarray(losses.vlb_terms(schedule, step, x0, x_t, index)), 0.0, atol=1e-4
    )


def test_bad_loss_arguments():
    schedule = schedules.make_schedule("linear", 100)
    x = jnp.zeros((1, 2, 2, 3))
    index = jnp.zeros((1,), jnp.int32)
    with pytest.raises(ValueError, match="'score'"):
        losses.diffusion_loss(schedule, x, x, x, index, x, mean_type="score")
    with pytest.raises(ValueError, match="6 output channels"):
        losses.diffusion_loss(schedule, x, x, x, index, x, var_type="learned_range")
