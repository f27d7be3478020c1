"""Stage sampling settings: checked once when made, each bad value named."""

import math

import numpy as np
import pytest

from unclip_jax.diffusion.analytic import AnalyticTable
from unclip_jax.sampling.settings import DiffusionSettings, check_eta, check_guidance_scale


@pytest.mark.parametrize(
    "field, value",
    [("schedule", "quadratic"), ("sampler", "euler"), ("prediction", "score"), ("clip", "hard")],
)
def test_bad_settings_name_the_value(field, value):
    with pytest.raises(ValueError, match=repr(value)):
        DiffusionSettings(**{field: value})


def test_max_steps_bounds_the_step_counts():
    settings = DiffusionSettings(train_steps=100, max_steps=10)
    assert settings.schedule_for(10).max_steps == 10
    with pytest.raises(ValueError, match="got 11"):
        settings.schedule_for(11)
    with pytest.raises(ValueError, match="got 0"):
        settings.schedule_for(0)
    with pytest.raises(ValueError, match="max_steps must be in"):
        DiffusionSettings(train_steps=100, max_steps=101)


def test_from_dict_reads_a_stage_section_and_its_variance():
    settings = DiffusionSettings.from_dict(
        {"schedule": "linear", "train_steps": 50, "learned_variance": True, "other": 1}
    )
    assert (settings.schedule, settings.train_steps, settings.var_type) == (
        "linear",
        50,
        "learned_range",
    )
    assert DiffusionSettings(sampler="ddpm").eta == 1.0 and DiffusionSettings().eta == 0.0


@pytest.mark.parametrize("scale", [-1.0, math.inf, math.nan, "3", True])
def test_guidance_scale_must_be_finite_and_non_negative(scale):
    with pytest.raises(ValueError, match="decoder_guidance must be"):
        check_guidance_scale(scale, "decoder_guidance")


@pytest.mark.parametrize("eta", [-0.5, math.inf])
def test_eta_must_be_finite_and_non_negative(eta):
    with pytest.raises(ValueError, match="eta must be"):
        check_eta(eta)
    assert check_guidance_scale(0) == 0.0 and check_eta(1) == 1.0


def test_variance_of_a_fixed_variance_stage():
    assert DiffusionSettings().var_type == "fixed_small"
    assert DiffusionSettings(variance="analytic").var_type == "analytic"
    assert DiffusionSettings(variance="fixed_large").var_type == "fixed_large"
    with pytest.raises(ValueError, match=r"variance must be one of .* got 'learned_range'"):
        DiffusionSettings(variance="learned_range")
    with pytest.raises(ValueError, match=r"'analytic' is for fixed-variance models; .* learned"):
        DiffusionSettings(variance="analytic", learned_variance=True)


def test_schedule_for_takes_the_stage_gamma_table():
    settings = DiffusionSettings(train_steps=100, variance="analytic", max_steps=10)
    table = AnalyticTable(np.full(100, 0.5), 1.0, 8)
    schedule = settings.schedule_for(5, table)
    assert schedule.x0_variance.shape == (10,) and settings.schedule_for(5).x0_variance is None
    with pytest.raises(ValueError, match="Γ table has 99 entries; the stage has train_steps=100"):
        settings.schedule_for(5, AnalyticTable(np.full(99, 0.5), 1.0, 8))
