"""The demo's variation and interpolation figures run on the tiny random pipeline with the smoke
config's counts, and report what the acceptance reads (keys, ranges, the fresh-noise baselines)."""

import sys
from pathlib import Path

import numpy as np
import pytest

from unclip_jax.demo import evaluate
from unclip_jax.pipelines.arguments import DecoderOptions
from unclip_jax.pipelines.image_operations import VARIATION_ETA
from unclip_jax.pipelines.unclip import UnCLIP

ROOT = Path(__file__).parents[2]


@pytest.fixture(scope="module")
def smoke():
    sys.path.insert(0, str(ROOT))
    from configs import demo as demo_config

    return demo_config.get_config("smoke")


def _data(count: int) -> list[dict]:
    rng = np.random.default_rng(3)
    colours = ["red", "blue", "green"]
    return [
        dict(image=rng.integers(0, 256, (16, 16, 3), np.uint8), colour=colours[i % 3], shape="star")
        for i in range(count)
    ]


def _pixels(images: np.ndarray) -> np.ndarray:
    """A stand-in image embedding: the flattened pixels, centred."""
    x = images.reshape(len(images), -1).astype(np.float64)
    return x - 127.5


def test_variation_and_interpolation_figures(pipeline_dir, smoke):
    pipe = UnCLIP.load(pipeline_dir, num_devices=1)
    s, e = smoke.sampling, smoke.eval
    decode = evaluate.options(s, DecoderOptions)
    data = _data(6)
    figures = evaluate.variation_figures(
        pipe,
        data[: e.num_variation_sources],
        e.variations_per_source,
        s.seed,
        decode,
        _pixels,
        list(e.variation_etas),
    )
    modes = {f"eta_{eta:g}" for eta in (*e.variation_etas, VARIATION_ETA)} | {"fresh"}
    assert set(figures["variations_by_mode"]) == modes
    assert figures["variations_by_mode"]["eta_0"]["spread"] == 0.0
    # Variations from fresh noise, and at the default η, spread; each mode's keep-rate is a rate.
    assert figures["variations_by_mode"]["fresh"]["spread"] > 0
    assert figures["variations_spread_vs_fresh"] > 0
    for mode in figures["variations_by_mode"].values():
        assert 0 <= mode["keep_colour_shape"] <= 1 and 0 <= mode["all_distinct"] <= 1
    assert figures["variations_eta"] == VARIATION_ETA
    ratio = figures["reconstruction_mse"] / figures["reconstruction_mse_fresh"]
    assert figures["reconstruction_mse_ratio"] == pytest.approx(ratio)
    assert 0 < figures["reconstruction_mse"] < 1

    ends = evaluate.interpolation_figures(
        pipe, data, e.num_interpolations, e.interpolation_frames, s.seed, decode
    )
    assert set(ends) == {
        "interpolation_endpoints",
        "interpolation_end_mse",
        "interpolation_end_mse_fixed",
        "interpolation_end_mse_ratio",
    }
    assert 0 < ends["interpolation_end_mse"] < 1 and 0 < ends["interpolation_end_mse_fixed"] < 1
    assert ends["interpolation_end_mse"] != ends["interpolation_end_mse_fixed"]
