import numpy as np
import pytest

from unclip_jax.diffusion import schedules


@pytest.mark.parametrize("name", ["linear", "cosine"])
@pytest.mark.parametrize(
    "spacing, expected_count",
    [("ddim50", 50), ("27", 27), (27, 27), ("10,10,5", 25), ("250", 250), ("1000", 1000)],
)
def test_respaced_alpha_bar_equals_original_at_kept_steps(name, spacing, expected_count):
    betas = schedules.make_betas(name, 1000)
    kept = schedules.space_timesteps(1000, spacing)
    assert kept.size == expected_count
    assert np.all(np.diff(kept) > 0) and kept[0] >= 0 and kept[-1] <= 999
    schedule = schedules.make_schedule(name, 1000, spacing)
    original = np.cumprod(1.0 - betas)[kept]
    np.testing.assert_allclose(np.asarray(schedule.alphas_cumprod), original, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(schedule.timesteps), kept)


def test_explicit_timesteps_like_karlo():
    steps = 25
    karlo = np.round(np.arange(steps) * 999 / (steps - 1)).astype(int)[::-1]
    kept = schedules.space_timesteps(1000, list(karlo))
    np.testing.assert_array_equal(kept, np.sort(karlo))
    assert kept[0] == 0 and kept[-1] == 999


def test_ddim_spacing_strides_and_sections():
    np.testing.assert_array_equal(schedules.space_timesteps(1000, "ddim50"), np.arange(0, 1000, 20))
    sections = schedules.space_timesteps(30, "3,2")
    np.testing.assert_array_equal(sections, [0, 7, 14, 15, 29])


def test_schedules_closed_forms():
    linear = schedules.make_betas("linear", 1000)
    assert linear[0] == pytest.approx(1e-4) and linear[-1] == pytest.approx(0.02)
    np.testing.assert_allclose(schedules.make_betas("linear", 250), np.linspace(4e-4, 0.08, 250))
    cosine = schedules.make_betas("cosine", 1000)
    assert cosine.max() <= 0.999 and np.all(cosine > 0)
    alpha_bar = np.cumprod(1 - cosine)
    t = 400
    f = lambda s: np.cos((s / 1000 + 0.008) / 1.008 * np.pi / 2) ** 2
    assert alpha_bar[t] == pytest.approx(f(t + 1) / f(0), rel=1e-9)  # ᾱ_t = f(t + 1) / f(0)


def test_padding_keeps_values_and_counts():
    padded = schedules.make_schedule("cosine", 1000, "ddim50", max_steps=100)
    plain = schedules.make_schedule("cosine", 1000, "ddim50")
    assert padded.max_steps == 100 and int(padded.num_steps) == 50
    np.testing.assert_array_equal(
        np.asarray(padded.alphas_cumprod)[:50], np.asarray(plain.alphas_cumprod)
    )


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: schedules.make_betas("quadratic", 1000), "quadratic"),
        (lambda: schedules.make_betas("linear", 0), "0"),
        (lambda: schedules.make_betas("linear", 10), "outside"),
        (lambda: schedules.space_timesteps(1000, 0), "got 0"),
        (lambda: schedules.space_timesteps(1000, "ddim0"), "got 0"),
        (lambda: schedules.space_timesteps(1000, 1001), "got 1001"),
        (lambda: schedules.space_timesteps(1000, "ddim3000"), "got 3000"),
        (lambda: schedules.space_timesteps(1000, "fast"), "'fast'"),
        (lambda: schedules.space_timesteps(1000, [5, 1000]), "1000"),
        (lambda: schedules.make_schedule("linear", 1000, 200, max_steps=100), "100"),
    ],
)
def test_bad_schedule_arguments(call, message):
    with pytest.raises(ValueError, match=message):
        call()
